"""Per-application objects (configuration, database pool, broker API client), reached from request code."""
from __future__ import annotations

from flask import current_app

from api.config import ApiConfig
from fleetcore.db import Database
from fleetcore.emqx_api import EmqxApi


def config() -> ApiConfig:
    return current_app.extensions["fleet.config"]


def database() -> Database:
    return current_app.extensions["fleet.db"]


def broker() -> EmqxApi:
    return current_app.extensions["fleet.emqx"]


def dispatcher():
    """The mission dispatcher (api/dispatcher.py)."""
    return current_app.extensions["fleet.dispatcher"]


def emergency_commands():
    """The emergency command sender (api/emergency_commands.py)."""
    return current_app.extensions["fleet.emergency_commands"]
