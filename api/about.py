"""The API root: ``GET /`` and ``GET /api/v1`` say what answers here (name, version, the commit it was built from)
and where its documentation is, instead of a 404 — the first thing a person or a client tries.

The commit is ``FLEET_GIT_COMMIT``: the embedded launcher reads it from git when it starts the api
(fleetctl/stack.py); the Docker image has it baked in at build time (Dockerfile ``ARG FLEET_GIT_COMMIT``, given
with ``docker compose build --build-arg``); "unknown" when neither knew it. The version is the installed package's.
"""
from __future__ import annotations

from importlib import metadata

from flask_smorest import Blueprint
from marshmallow import Schema, fields

from api.extensions import config

PACKAGE = "fleet-backend"
NAME = "Fleet operator API"
LINKS = {"api": "/api/v1", "docs": "/docs", "openapi": "/openapi.json", "console": "/console/",
         "health": "/healthz", "token": "/api/v1/auth/token"}

blp = Blueprint("about", __name__, description="What answers here: name, version, commit, links (no "
                                                 "authentication).")


class AboutSchema(Schema):
    name = fields.String(metadata={"example": NAME})
    version = fields.String(metadata={"description": "the release of the backend", "example": "0.1.0"})
    api_version = fields.String(metadata={"description": "the REST API's version, part of its path",
                                          "example": "v1"})
    commit = fields.String(metadata={"description": "the git commit it runs, or `unknown`"})
    links = fields.Dict(keys=fields.String(), values=fields.String(),
                        metadata={"description": "api, docs (Swagger UI), openapi (this document's JSON), console, "
                                                 "health, token (OAuth2 token endpoint)"})


def _version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def about() -> dict:
    return {"name": NAME, "version": _version(), "api_version": "v1", "commit": config().git_commit,
            "links": LINKS}


@blp.route("/", methods=["GET"])
@blp.response(200, AboutSchema)
def root():
    """The service's name, version and commit, and links to the API, its documentation and the OpenAPI document."""
    return about()


@blp.route("/api/v1", methods=["GET"])
@blp.response(200, AboutSchema)
def api_root():
    """The same as `GET /`, at the API's own root."""
    return about()
