"""Numbered SQL migrations in ``sql/``, applied in order, once each.

* A migration is a file ``NNN_name.sql``; it runs in its own transaction, so it applies fully or not at all.
* Applied versions are recorded in ``schema_migrations`` with the SHA-256 of the file. A file that was edited
  after it was applied is refused with a clear message: schema changes go into a new migration.
* Concurrent runners (several services starting at once) are serialised with an advisory lock.
"""
from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg2.extensions

from fleetcore import paths

FILE_PATTERN = re.compile(r"^(?P<version>\d{3,})_(?P<name>[a-z0-9_]+)\.sql$")
# Arbitrary constant: "fleet migrations" as an advisory-lock key.
ADVISORY_LOCK_KEY = 0x666C656574


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree, or one failed to apply."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str
    checksum: str

    @property
    def filename(self) -> str:
        return self.path.name


def checksum_of(text: str) -> str:
    # Line endings are normalised so a checkout with CRLF conversion does not look like an edit.
    return hashlib.sha256(text.replace("\r\n", "\n").encode("utf-8")).hexdigest()


def discover(directory: Path | None = None) -> list[Migration]:
    """All migration files in version order; a duplicate version number is an error."""
    directory = directory or paths.sql_dir()
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = FILE_PATTERN.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files must be named NNN_lowercase_name.sql")
        version = int(match["version"])
        if version in found:
            raise MigrationError(f"{path.name} and {found[version].filename} share version {version}")
        text = path.read_text(encoding="utf-8")
        found[version] = Migration(version, match["name"], path, text, checksum_of(text))
    return [found[v] for v in sorted(found)]


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL
)
"""


def applied_versions(conn: psycopg2.extensions.connection) -> dict[int, tuple[str, str]]:
    """``{version: (name, checksum)}`` of what the database has applied (empty for a new database)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not cur.fetchone()[0]:
            return {}
        cur.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        return {row[0]: (row[1], row[2]) for row in cur.fetchall()}


def verify(migrations: list[Migration], applied: dict[int, tuple[str, str]]) -> None:
    """Refuse to go on when an applied migration was edited or removed."""
    on_disk = {m.version: m for m in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        migration = on_disk.get(version)
        if migration is None:
            raise MigrationError(
                f"migration {version:03d}_{name}.sql was applied to this database but is missing from "
                f"{paths.sql_dir()}; restore the file (migrations are never deleted)")
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {migration.filename} was edited after it was applied "
                f"(recorded sha256 {checksum[:12]}…, file now {migration.checksum[:12]}…). "
                f"Applied migrations are immutable: revert the edit and put the change in a new migration")


def migrate(conn: psycopg2.extensions.connection, directory: Path | None = None,
            log: Callable[[str], None] = lambda message: None) -> list[Migration]:
    """Apply every pending migration; return the ones applied by this call."""
    migrations = discover(directory)
    conn.autocommit = False
    with conn.cursor() as cur:
        # Session-level lock: held across the per-migration transactions below.
        cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    conn.commit()
    try:
        with conn.cursor() as cur:
            cur.execute(_CREATE_TABLE)
        conn.commit()
        applied = applied_versions(conn)
        verify(migrations, applied)
        done = []
        for migration in migrations:
            if migration.version in applied:
                continue
            started = time.monotonic()
            try:
                with conn.cursor() as cur:
                    cur.execute(migration.sql)
                    duration_ms = int((time.monotonic() - started) * 1000)
                    cur.execute(
                        "INSERT INTO schema_migrations (version, name, checksum, duration_ms) VALUES (%s, %s, %s, %s)",
                        (migration.version, migration.name, migration.checksum, duration_ms))
                conn.commit()
            except psycopg2.Error as exc:
                conn.rollback()
                raise MigrationError(f"migration {migration.filename} failed and was rolled back: "
                                     f"{str(exc).strip()}") from exc
            log(f"applied migration {migration.filename} in {duration_ms} ms")
            done.append(migration)
        return done
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
        conn.commit()


def pending(conn: psycopg2.extensions.connection, directory: Path | None = None) -> list[Migration]:
    """Migrations on disk that this database has not applied yet (after verifying the applied ones)."""
    migrations = discover(directory)
    applied = applied_versions(conn)
    verify(migrations, applied)
    return [m for m in migrations if m.version not in applied]
