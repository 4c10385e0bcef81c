"""Production server settings for authsvc (gunicorn): the same in Docker and in the embedded stack.

authz is pure CPU and authn is one short query, so throughput comes from processes (one per core by default,
``AUTHSVC_WORKERS``), each with a few threads to overlap the database round trip. The broker keeps HTTP
connections open (keep-alive, no pipelining): the keep-alive timeout is longer than its idle time, so an idle
pooled connection is never closed under it.
"""
import os
import shutil
import tempfile
from pathlib import Path

bind = os.environ.get("AUTHSVC_BIND", "0.0.0.0:8081")
workers = int(os.environ.get("AUTHSVC_WORKERS", str(os.cpu_count() or 2)))
worker_class = "gthread"
threads = int(os.environ.get("AUTHSVC_THREADS", "8"))
timeout = 30
graceful_timeout = 10
keepalive = 75
accesslog = None            # every decision is logged by the app, structured
errorlog = "-"
loglevel = os.environ.get("FLEET_LOG_LEVEL", "info").lower()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "ts=%(asctime)s level=%(levelname)s component=authsvc logger=gunicorn "
                                       "msg=\"%(message)s\""}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {"gunicorn.error": {"handlers": ["console"], "level": loglevel.upper(), "propagate": False}},
}


# Metrics of all worker processes (authsvc/metrics.py): each writes its own files here, /metrics adds them up. A
# fresh directory per start (a stale file would add a dead process's figures to the new ones).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="authsvc-metrics-")


def on_starting(server) -> None:
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)


def child_exit(server, worker) -> None:
    # imported here: prometheus_client picks its value store when first imported, after the variable above is set
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)
