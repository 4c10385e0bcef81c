"""``python -m api.server`` — the api as production and the embedded stack serve it: granian (ASGI,
fleetcore/http_server.py) in front of ``create_asgi_app`` (the Flask app behind api/asgi.py's bridge).
Settings: ``ApiServerConfig`` in api/config.py; what each protects: docs/OPERATIONS.md (HTTP servers)."""
from __future__ import annotations

from api.asgi import WsgiBridge
from api.config import ApiServerConfig
from fleetcore import http_server


def create_asgi_app() -> WsgiBridge:
    """The factory granian serves (once per worker process)."""
    from api import create_app
    flask_app = create_app()
    server = ApiServerConfig.from_env()
    return WsgiBridge(flask_app, threads=server.threads,
                      max_body_bytes=flask_app.extensions["fleet.config"].max_request_bytes,
                      body_timeout_s=server.body_timeout_s)


def main() -> None:
    http_server.serve("api", "api.server:create_asgi_app", "asgi", ApiServerConfig.from_env())


if __name__ == "__main__":
    main()
