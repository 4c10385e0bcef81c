"""``python -m authsvc.server`` — authsvc as production and the embedded stack serve it: granian (WSGI,
fleetcore/http_server.py) in front of ``authsvc.create_app``. granian reads each request whole before a thread
runs it, so the broker callouts' plain-WSGI fast path (authsvc/broker_request.py) never waits on a client.
Settings: ``AuthsvcServerConfig`` in authsvc/config.py; what each protects: docs/OPERATIONS.md (HTTP servers)."""
from __future__ import annotations

from authsvc.config import AuthsvcServerConfig
from fleetcore import http_server


def main() -> None:
    http_server.serve("authsvc", "authsvc:create_app", "wsgi", AuthsvcServerConfig.from_env())


if __name__ == "__main__":
    main()
