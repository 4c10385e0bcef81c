"""Database bootstrap: roles and the database itself. Runs with an administrator connection.

Two roles, least privilege:
* ``fleet`` owns the schema; authsvc, api and the migrations connect as it.
* ``fleet_ingest`` is what the broker's PostgreSQL connector uses; the migrations grant it only INSERT on
  the ingest inbox views (the trigger functions behind them run with the owner's rights).
Passwords are (re)set on every bootstrap, so rotating one is: change the secret, run bootstrap again.
"""
from __future__ import annotations

from collections.abc import Callable

from psycopg2 import sql

from fleetcore import db

DATABASE = "fleet"
APP_ROLE = "fleet"
INGEST_ROLE = "fleet_ingest"


def _ensure_role(cur, role: str, password: str) -> None:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    verb = "ALTER" if cur.fetchone() else "CREATE"
    cur.execute(sql.SQL(verb + " ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(password)))


def bootstrap(admin_url: str, *, app_password: str, ingest_password: str, database: str = DATABASE,
              log: Callable[[str], None] = lambda m: None) -> None:
    """Create or update the roles and create the database (owned by the app role) if it is missing."""
    conn = db.connect(admin_url, autocommit=True, application_name="fleetctl-bootstrap")
    try:
        with conn.cursor() as cur:
            _ensure_role(cur, APP_ROLE, app_password)
            _ensure_role(cur, INGEST_ROLE, ingest_password)
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if not cur.fetchone():
                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
                    sql.Identifier(database), sql.Identifier(APP_ROLE)))
                log(f"created database {database}")
            cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
            cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.Identifier(INGEST_ROLE)))
    finally:
        conn.close()
