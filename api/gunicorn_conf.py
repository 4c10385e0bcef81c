"""Production server settings for the api (gunicorn, threaded): the same in Docker and in the embedded stack.

One process with many threads: requests mostly wait on PostgreSQL and the broker, and the in-process metrics stay
exact. Scale out with more api replicas; the background work is not here but in the worker (`python -m api.worker`).
"""
import os

bind = os.environ.get("API_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("API_WORKERS", "1"))
worker_class = "gthread"
threads = int(os.environ.get("API_THREADS", "16"))
timeout = 60
graceful_timeout = 20
keepalive = 5
accesslog = None            # requests are counted in /metrics; errors are logged by the app
errorlog = "-"
loglevel = os.environ.get("FLEET_LOG_LEVEL", "info").lower()
# The app logs structured lines itself; keep gunicorn's own messages terse.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {
        "format": "ts=%(asctime)s level=%(levelname)s component=api logger=gunicorn msg=\"%(message)s\""}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {"gunicorn.error": {"handlers": ["console"], "level": loglevel.upper(), "propagate": False}},
}
