"""The database from ``sql/``: numbered migrations, applied once each, and code files, applied again when they change.

Two kinds of SQL file, because they change in different ways:

* **Migrations**, ``sql/NNN_name.sql``: schemas, tables, indexes, row types, grants on them and data changes —
  what holds data, so its history matters. Each runs once, in version order, in its own transaction (it applies
  fully or not at all), and is recorded in ``schema_migrations`` with the SHA-256 of its text. An applied migration
  is immutable: a file edited after it was applied is refused, and the change goes into a new migration.
  The one exception is a rewrite that leaves the schema as it was (moving functions out into code files, fixing a
  comment): the file names each earlier text in a header line ``-- supersedes sha256: <its checksum>``, and a
  database that applied one of those is accepted — the new checksum is recorded and the fact logged. Any other
  edit is still refused.
* **Code files**, ``sql/code/NN_topic.sql``: functions, triggers and views — what can be created again at any time
  without losing data. Each file is written to run any number of times (``CREATE OR REPLACE``, grants re-applied)
  and they run in file-name order, after the migrations, all in one transaction, recorded in ``schema_code`` with
  their checksums. When a code file is new, changed or removed, or a migration was applied, every code file is
  applied again: a function may depend on what another file creates, and re-creating the whole set keeps the
  functions, views and triggers consistent with each other (it takes a fraction of a second). A failure rolls the
  whole step back, so the previous code stays in place.

So changing a function, trigger or view is an edit of its code file and nothing more; changing a table is a new
migration. Two rules follow from the order. A migration must not call a function from ``sql/code/`` (on a new
database none exists yet). And what ``CREATE OR REPLACE`` cannot change — another return type or argument list,
fewer view columns, a row type — is dropped by a new migration (``DROP FUNCTION IF EXISTS …``) and created again by
the code file in the same run. To re-apply every code file without a change (say after an edit by hand in psql),
``DELETE FROM schema_code`` and migrate.

Concurrent runners (several services starting at once) are serialised with an advisory lock held across both steps.
"""
from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2.extensions

from fleetcore import paths, vda5050

FILE_PATTERN = re.compile(r"^(?P<version>\d{3,})_(?P<name>[a-z0-9_]+)\.sql$")
CODE_DIRECTORY = "code"
CODE_FILE_PATTERN = re.compile(r"^(?P<position>\d{2})_(?P<name>[a-z0-9_]+)\.sql$")
SUPERSEDES_PATTERN = re.compile(r"^-- supersedes sha256: (?P<checksum>[0-9a-f]{64})[ \t]*$", re.MULTILINE)
# Arbitrary constant: "fleet migrations" as an advisory-lock key.
ADVISORY_LOCK_KEY = 0x666C656574


class MigrationError(RuntimeError):
    """The SQL files on disk and the database disagree, or one failed to apply."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str
    checksum: str
    supersedes: frozenset[str] = frozenset()  # checksums of earlier texts of this file that databases may have applied

    @property
    def filename(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class CodeFile:
    position: int
    name: str
    path: Path
    sql: str
    checksum: str

    @property
    def filename(self) -> str:
        return self.path.name


@dataclass
class Outcome:
    """What one ``migrate`` call did."""
    applied: list[Migration] = field(default_factory=list)    # migrations applied now
    rewrites: list[Migration] = field(default_factory=list)   # applied earlier in a text the file supersedes
    code: list[CodeFile] = field(default_factory=list)        # code files applied now: all of them, or none
    code_changes: dict[str, str] = field(default_factory=dict)  # code file → new | changed | removed

    def summary(self) -> str:
        parts = [f"{len(self.applied)} migration(s) applied"]
        if self.rewrites:
            parts.append(f"{len(self.rewrites)} rewritten migration(s) accepted")
        if self.code:
            parts.append(f"{len(self.code)} code file(s) applied")
        else:
            parts.append("code files unchanged")
        return ", ".join(parts)


def checksum_of(text: str) -> str:
    # Line endings are normalised so a checkout with CRLF conversion does not look like an edit.
    return hashlib.sha256(text.replace("\r\n", "\n").encode("utf-8")).hexdigest()


def _numbered_files(directory: Path, pattern: re.Pattern, shape: str, number: str) -> list[tuple[re.Match, str]]:
    """``(name match, text)`` of the ``*.sql`` files in ``directory`` by their number; a file not named like
    ``shape`` or a number used twice is an error."""
    found: dict[int, tuple[re.Match, str]] = {}
    for path in sorted(directory.glob("*.sql")):
        match = pattern.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: {shape}")
        value = int(match[number])
        if value in found:
            raise MigrationError(f"{path.name} and {found[value][0].string} share {number} {value}")
        found[value] = (match, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def discover(directory: Path | None = None) -> list[Migration]:
    """All migration files in version order; a duplicate version number is an error."""
    directory = directory or paths.sql_dir()
    return [Migration(int(m["version"]), m["name"], directory / m.string, text, checksum_of(text),
                      frozenset(s["checksum"] for s in SUPERSEDES_PATTERN.finditer(text)))
            for m, text in _numbered_files(directory, FILE_PATTERN,
                                           "migration files must be named NNN_lowercase_name.sql", "version")]


def discover_code(directory: Path | None = None) -> list[CodeFile]:
    """The code files of ``sql/code/`` in the order they are applied; a duplicate position is an error."""
    code_dir = (directory or paths.sql_dir()) / CODE_DIRECTORY
    return [CodeFile(int(m["position"]), m["name"], code_dir / m.string, text, checksum_of(text))
            for m, text in _numbered_files(code_dir, CODE_FILE_PATTERN,
                                           f"code files in {CODE_DIRECTORY}/ must be named NN_lowercase_topic.sql",
                                           "position")]


_CREATE_TABLES = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL
);
CREATE TABLE IF NOT EXISTS schema_code (
    filename    text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL
)
"""


def _table_exists(conn: psycopg2.extensions.connection, table: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        return cur.fetchone()[0]


def applied_versions(conn: psycopg2.extensions.connection) -> dict[int, tuple[str, str]]:
    """``{version: (name, checksum)}`` of what the database has applied (empty for a new database)."""
    if not _table_exists(conn, "schema_migrations"):
        return {}
    with conn.cursor() as cur:
        cur.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        return {row[0]: (row[1], row[2]) for row in cur.fetchall()}


def applied_code(conn: psycopg2.extensions.connection) -> dict[str, str]:
    """``{filename: checksum}`` of the code files the database has applied (empty before the first time)."""
    if not _table_exists(conn, "schema_code"):
        return {}
    with conn.cursor() as cur:
        cur.execute("SELECT filename, checksum FROM schema_code")
        return dict(cur.fetchall())


def _is_rewrite(migration: Migration, recorded_checksum: str) -> bool:
    return migration.checksum != recorded_checksum and recorded_checksum in migration.supersedes


def verify(migrations: list[Migration], applied: dict[int, tuple[str, str]]) -> list[Migration]:
    """Refuse to go on when an applied migration was edited or removed. Returns the applied migrations whose file
    is a declared rewrite of the text the database recorded (``-- supersedes sha256: …``)."""
    on_disk = {m.version: m for m in migrations}
    rewrites = []
    for version, (name, checksum) in sorted(applied.items()):
        migration = on_disk.get(version)
        if migration is None:
            raise MigrationError(
                f"migration {version:03d}_{name}.sql was applied to this database but is missing from "
                f"{paths.sql_dir()}; restore the file (migrations are never deleted)")
        if _is_rewrite(migration, checksum):
            rewrites.append(migration)
        elif migration.checksum != checksum:
            raise MigrationError(
                f"migration {migration.filename} was edited after it was applied "
                f"(recorded sha256 {checksum[:12]}…, file now {migration.checksum[:12]}…). "
                f"Applied migrations are immutable: revert the edit and put the change in a new migration "
                f"(functions, triggers and views belong in {CODE_DIRECTORY}/, which may be edited)")
    return rewrites


def code_changes(code_files: list[CodeFile], recorded: dict[str, str]) -> dict[str, str]:
    """``{filename: new | changed | removed}`` between the code files on disk and those the database applied."""
    changes = {}
    for code_file in code_files:
        if code_file.filename not in recorded:
            changes[code_file.filename] = "new"
        elif recorded[code_file.filename] != code_file.checksum:
            changes[code_file.filename] = "changed"
    for filename in sorted(set(recorded) - {c.filename for c in code_files}):
        changes[filename] = "removed"
    return changes


def migrate(conn: psycopg2.extensions.connection, directory: Path | None = None,
            log: Callable[[str], None] = lambda message: None) -> Outcome:
    """Apply every pending migration, then the code files if anything changed; return what was done."""
    migrations = discover(directory)
    code_files = discover_code(directory)
    outcome = Outcome()
    conn.autocommit = False
    with conn.cursor() as cur:
        # Session-level lock: held across the per-migration transactions and the code step below.
        cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    conn.commit()
    try:
        with conn.cursor() as cur:
            cur.execute(_CREATE_TABLES)
        conn.commit()
        applied = applied_versions(conn)
        outcome.rewrites = verify(migrations, applied)
        for migration in outcome.rewrites:
            _accept_rewrite(conn, migration, applied[migration.version][1], log)
        for migration in migrations:
            if migration.version not in applied:
                _apply_migration(conn, migration, log)
                outcome.applied.append(migration)
        outcome.code_changes = code_changes(code_files, applied_code(conn))
        if outcome.code_changes:
            _apply_code(conn, code_files, outcome.code_changes, log)
            outcome.code = code_files
        _sync_vda5050_schemas(conn, log)
        return outcome
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
        conn.commit()


# Recorded code is forgotten in the same transaction as any schema change, so the code step that follows applies
# every code file — and, should it fail, the next run still does.
_FORGET_CODE = "DELETE FROM schema_code"


def _accept_rewrite(conn: psycopg2.extensions.connection, migration: Migration, recorded: str,
                    log: Callable[[str], None]) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE schema_migrations SET checksum = %s WHERE version = %s",
                    (migration.checksum, migration.version))
        cur.execute(_FORGET_CODE)
    conn.commit()
    log(f"migration {migration.filename}: the database applied an earlier text (sha256 {recorded[:12]}…) that "
        f"this file declares it supersedes; recorded the new checksum {migration.checksum[:12]}…")


def _has_statements(sql: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in sql.splitlines())


def _apply_migration(conn: psycopg2.extensions.connection, migration: Migration,
                     log: Callable[[str], None]) -> None:
    started = time.monotonic()
    try:
        with conn.cursor() as cur:
            if _has_statements(migration.sql):  # a migration emptied by a rewrite is only comments
                cur.execute(migration.sql)
            duration_ms = int((time.monotonic() - started) * 1000)
            cur.execute(
                "INSERT INTO schema_migrations (version, name, checksum, duration_ms) VALUES (%s, %s, %s, %s)",
                (migration.version, migration.name, migration.checksum, duration_ms))
            cur.execute(_FORGET_CODE)
        conn.commit()
    except psycopg2.Error as exc:
        conn.rollback()
        raise MigrationError(f"migration {migration.filename} failed and was rolled back: "
                             f"{str(exc).strip()}") from exc
    log(f"applied migration {migration.filename} in {duration_ms} ms")


def _apply_code(conn: psycopg2.extensions.connection, code_files: list[CodeFile], changes: dict[str, str],
                log: Callable[[str], None]) -> None:
    started = time.monotonic()
    current = None
    try:
        with conn.cursor() as cur:
            cur.execute(_FORGET_CODE)
            for current in code_files:
                file_started = time.monotonic()
                cur.execute(current.sql)
                cur.execute("INSERT INTO schema_code (filename, checksum, duration_ms) VALUES (%s, %s, %s)",
                            (current.filename, current.checksum, int((time.monotonic() - file_started) * 1000)))
        conn.commit()
    except psycopg2.Error as exc:
        conn.rollback()
        where = f"code file {CODE_DIRECTORY}/{current.filename}" if current else "the code step"
        raise MigrationError(f"{where} failed; no code file was applied and the previous code stays in place: "
                             f"{str(exc).strip()}") from exc
    if len(changes) == len(code_files) and set(changes.values()) == {"new"}:
        because = "all new"
    else:
        because = ", ".join(f"{filename} {change}" for filename, change in sorted(changes.items()))
    log(f"applied {len(code_files)} code file(s) from {CODE_DIRECTORY}/ in "
        f"{int((time.monotonic() - started) * 1000)} ms ({because})")


def _sync_vda5050_schemas(conn: psycopg2.extensions.connection, log: Callable[[str], None]) -> None:
    """The official VDA 5050 schemas are data from an installed package, not a migration: store the installed
    version on every migrate, so upgrading the package is all an update takes (fleetcore/vda5050.py)."""
    if not _table_exists(conn, "vda5050_schemas"):
        return
    with conn.cursor() as cur:
        changed = vda5050.sync_schemas(cur)
    conn.commit()
    if changed:
        log(f"stored {changed} VDA 5050 schema(s) from {vda5050.SCHEMA_DISTRIBUTION}")


def status(conn: psycopg2.extensions.connection, directory: Path | None = None) -> list[tuple[str, str]]:
    """``(file, state)`` for every migration and code file, as ``fleetctl db status`` shows them."""
    applied = applied_versions(conn)
    rows = []
    for migration in discover(directory):
        recorded = applied.get(migration.version)
        if recorded is None:
            state = "pending"
        elif recorded[1] == migration.checksum:
            state = "applied"
        elif _is_rewrite(migration, recorded[1]):
            state = "applied (an earlier text this file supersedes; migrate records the new one)"
        else:
            state = "EDITED after it was applied: migrate refuses it"
        rows.append((migration.filename, state))
    on_disk = {m.version for m in discover(directory)}
    rows += [(f"{v:03d}_{name}.sql", "MISSING: applied but not on disk")
             for v, (name, _) in sorted(applied.items()) if v not in on_disk]
    code_files = discover_code(directory)
    changes = code_changes(code_files, applied_code(conn))
    for code_file in code_files:
        rows.append((f"{CODE_DIRECTORY}/{code_file.filename}",
                     {"new": "pending (new)", "changed": "pending (changed)"}.get(
                         changes.get(code_file.filename, ""), "applied")))
    rows += [(f"{CODE_DIRECTORY}/{filename}", "removed (its objects stay until a migration drops them)")
             for filename, change in changes.items() if change == "removed"]
    return rows
