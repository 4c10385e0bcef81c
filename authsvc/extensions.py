"""Per-application objects (configuration, database pool, broker API client, fleet CA), reached from request code."""
from __future__ import annotations

from flask import current_app

from authsvc.config import AuthsvcConfig
from fleetcore.certificates import FleetCA
from fleetcore.db import Database
from fleetcore.emqx_api import EmqxApi


def config() -> AuthsvcConfig:
    return current_app.extensions["authsvc.config"]


def database() -> Database:
    return current_app.extensions["authsvc.db"]


def broker() -> EmqxApi:
    return current_app.extensions["authsvc.emqx"]


def fleet_ca() -> FleetCA | None:
    """The fleet CA that signs vehicles' CSRs; None when authsvc was started without one."""
    return current_app.extensions["authsvc.fleet_ca"]
