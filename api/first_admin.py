"""The first operator account, ``admin``, with the password from ``FLEET_ADMIN_PASSWORD``.

Created by a command, never by the web application: ``fleetctl create-admin`` (Compose's one-shot ``migrate``
job runs it after the migrations, before the api starts), and the embedded launcher calls ``create`` after
migrating. It acts only while no admin exists; later password changes go through ``/api/v1/users``. A password
that breaks the rule for operator passwords (api/passwords.py) stops it before anything is written — also when
an admin exists already, so a bad setting is noticed at the deployment that introduces it.
"""
from __future__ import annotations

import logging

from api import passwords
from api.auth import hash_password
from api.queries import audit, users
from fleetcore.config import ConfigError
from fleetcore.db import Database
from fleetcore.logs import log_event

log = logging.getLogger("api.first_admin")
PASSWORD_VARIABLE = "FLEET_ADMIN_PASSWORD"  # noqa: S105 - the variable's name, not a password


def check_password(password: str) -> None:
    problem = passwords.problem(password)
    if problem:
        raise ConfigError(f"{PASSWORD_VARIABLE} is not a valid operator password: it must have {problem}")


def create(database_url: str, password: str, hash_cost: int) -> bool:
    """Create ``admin`` unless an admin exists; True if it was created. ConfigError for a bad password.
    ``hash_cost``: bcrypt's, ``passwords.hash_cost()``."""
    check_password(password)
    database = Database(database_url, max_connections=1, application_name="fleetctl-create-admin")
    try:
        with database.transaction() as cur:
            if users.admin_exists(cur):
                return False
        password_hash = hash_password(password, hash_cost)  # bcrypt: outside the transaction
        with database.transaction() as cur:
            created = users.create_first_admin(cur, password_hash)
            if created:
                audit.record(cur, "system", None, "user.create_initial_admin", "user", "admin")
    finally:
        database.close()
    if created:
        log_event(log, "api.initial_admin_created", user="admin")
    return created
