"""``GET /healthz`` — liveness (the process answers) plus whether the database answers. No authentication."""
from __future__ import annotations

from flask import Blueprint, jsonify

from authsvc.extensions import database

blp = Blueprint("health", __name__)


@blp.route("/healthz", methods=["GET"])
def healthz():
    return jsonify({"status": "ok", "database": "up" if database().ping() else "down"})
