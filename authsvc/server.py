"""``python -m authsvc.server`` — authsvc as production and the embedded stack serve it: granian (WSGI,
fleetcore/http_server.py) in front of ``authsvc.create_app``. granian reads each request whole before a thread
runs it, so the broker callouts' plain-WSGI fast path (authsvc/broker_request.py) never waits on a client.
Settings: ``AuthsvcServerConfig`` in authsvc/config.py; what each protects: docs/OPERATIONS.md (HTTP servers)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from authsvc import create_app
from authsvc.config import AuthsvcServerConfig
from fleetcore import http_server


def metrics_directory() -> None:
    """The worker processes share their metrics through files (authsvc/metrics.py): a fresh directory for this
    server (a stale file would add an earlier run's figures to the new ones), set before any worker starts and
    before prometheus_client is imported, which picks its value store once, on import."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        shutil.rmtree(given, ignore_errors=True)
        Path(given).mkdir(parents=True, exist_ok=True)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="authsvc-metrics-")


def application():
    """What each granian worker process serves (fleetcore/http_server.py)."""
    return http_server.traced_threads(create_app())


def main() -> None:
    metrics_directory()
    http_server.serve("authsvc", "authsvc.server:application", "wsgi", AuthsvcServerConfig.from_env())


if __name__ == "__main__":
    main()
