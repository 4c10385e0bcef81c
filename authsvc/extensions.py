"""Per-application objects (configuration, database pool, broker API client), reached from request code."""
from __future__ import annotations

from flask import current_app

from authsvc.config import AuthsvcConfig
from fleetcore.db import Database
from fleetcore.emqx_api import EmqxApi


def config() -> AuthsvcConfig:
    return current_app.extensions["authsvc.config"]


def database() -> Database:
    return current_app.extensions["authsvc.db"]


def broker() -> EmqxApi:
    return current_app.extensions["authsvc.emqx"]
