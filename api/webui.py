"""The pages the api serves to a browser, every file from this package or an installed one — nothing from the
internet, so both work offline:

* ``/console/`` — the operator console (``api/console/``: one page, its script and style, and Leaflet 1.9.4 vendored
  under ``api/console/vendor/`` with its licence). It logs in through ``/api/v1/auth`` like any client and gets its
  live updates from ``/api/v1/events``; ``/console/config.json`` tells it the map's tile URL (``CONSOLE_TILE_URL``;
  empty: a grid, no tiles).
* ``/docs/swagger-ui/<file>`` — Swagger UI's files from the ``swagger-ui-bundle-v2`` package, which ``/docs``
  (flask-smorest) loads when ``API_SWAGGER_UI_URL`` keeps its default.

The files are public (they hold no data); every call they make is authenticated.
"""
from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from flask import Blueprint, jsonify, redirect, send_from_directory

from api.extensions import config

CONSOLE_DIR = Path(__file__).parent / "console"
SWAGGER_UI_DIR = Path(swagger_ui_bundle.swagger_ui_path)
SWAGGER_UI_URL = "/docs/swagger-ui/"   # API_SWAGGER_UI_URL's default

blp = Blueprint("webui", __name__)


@blp.get("/console")
def console_redirect():
    return redirect("/console/", code=308)


@blp.get("/console/")
def console_page():
    return _no_cache(send_from_directory(CONSOLE_DIR, "index.html"))


@blp.get("/console/config.json")
def console_config():
    return _no_cache(jsonify({"tile_url": config().console_tile_url,
                              "tile_attribution": config().console_tile_attribution}))


@blp.get("/console/<path:filename>")
def console_file(filename: str):
    return _no_cache(send_from_directory(CONSOLE_DIR, filename))


@blp.get("/favicon.ico")
def favicon():
    """Browsers ask for it on every page (/docs too)."""
    return send_from_directory(SWAGGER_UI_DIR, "favicon-32x32.png", mimetype="image/png", max_age=86400)


@blp.get(f"{SWAGGER_UI_URL}<path:filename>")
def swagger_ui_file(filename: str):
    return send_from_directory(SWAGGER_UI_DIR, filename, max_age=86400)


def _no_cache(response):
    """The console's files change with each release of the api: the browser asks again (a 304 when unchanged)."""
    response.headers["Cache-Control"] = "no-cache"
    return response
