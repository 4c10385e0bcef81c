"""``python -m api.server`` — the api as production and the embedded stack serve it: granian (ASGI,
fleetcore/http_server.py) in front of ``api.asgi.create_asgi_app`` (the Flask app behind its bridge).
Settings: ``ApiServerConfig`` in api/config.py; what each protects: docs/OPERATIONS.md (HTTP servers)."""
from __future__ import annotations

from api.config import ApiServerConfig
from fleetcore import http_server


def main() -> None:
    http_server.serve("api", "api.asgi:create_asgi_app", "asgi", ApiServerConfig.from_env())


if __name__ == "__main__":
    main()
