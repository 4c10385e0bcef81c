"""The server authsvc ran on before granian, kept as bench/authsvc.py's baseline: gunicorn with threaded workers
(one process per core, 8 threads each, keep-alive 75 s), exactly as it was configured for production.

Not for production: a gthread worker gives a thread to every unfinished request, so slow or half-open
connections take it down (docs/OPERATIONS.md, HTTP servers). gunicorn ≥ 25 also opens a control socket in the
home directory that every gunicorn on the machine shares; it is off here so a benchmark never touches another
stack's server.
"""
import os

bind = os.environ.get("AUTHSVC_BIND", "0.0.0.0:8081")
workers = os.cpu_count() or 2
worker_class = "gthread"
threads = 8
timeout = 30
graceful_timeout = 10
keepalive = 75
control_socket_disable = True
accesslog = None
errorlog = "-"
loglevel = "warning"
