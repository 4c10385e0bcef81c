"""Faults injected into a real PostgreSQL, for the ingest's failure tests (tests/sql, tests/failure).

``inject_fault(conn, table, column, value, sqlstate)`` installs a row trigger on ``table`` (``schema.table`` outside
public) that raises ``sqlstate``
for every row whose ``column`` equals ``value`` (a vehicle id): a deadlock, a serialization failure, a statement
timeout or a plain bug, reported by PostgreSQL exactly as the real thing would be (same SQLSTATE, raised inside the
ingest's own statement). ``sleep_s`` makes the trigger sleep instead, for a real ``statement_timeout`` to cancel.
``clear_faults(conn)`` removes them all. The connection must be the owner's (autocommit).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

from psycopg2 import sql

_counter = itertools.count(1)

_FUNCTION = """
CREATE OR REPLACE FUNCTION public.test_injected_fault() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF to_jsonb(NEW) ->> TG_ARGV[0] = TG_ARGV[1] THEN
        IF TG_ARGV[3] <> '' THEN
            PERFORM pg_sleep(TG_ARGV[3]::float8);
        ELSE
            RAISE EXCEPTION 'injected fault on %', TG_TABLE_NAME USING ERRCODE = TG_ARGV[2];
        END IF;
    END IF;
    RETURN NEW;
END $$
"""


def inject_fault(conn, table: str, column: str, value: str, sqlstate: str = "XX000",
                 sleep_s: float | None = None) -> str:
    """Install the fault; returns the trigger's name."""
    name = f"test_fault_{next(_counter)}"
    with conn.cursor() as cur:
        cur.execute(_FUNCTION)
        cur.execute(sql.SQL("CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW "
                            "EXECUTE FUNCTION public.test_injected_fault({}, {}, {}, {})").format(
            sql.Identifier(name), sql.Identifier(*table.split(".")), sql.Literal(column), sql.Literal(value),
            sql.Literal(sqlstate), sql.Literal("" if sleep_s is None else str(sleep_s))))
    return name


def clear_faults(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT tgname, tgrelid::regclass::text AS tab FROM pg_trigger "
                    "WHERE tgname LIKE 'test_fault_%' AND tgparentid = 0")
        for name, table in cur.fetchall():
            cur.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(name), sql.SQL(table)))


@contextmanager
def fault(conn, table: str, column: str, value: str, sqlstate: str = "XX000",
          sleep_s: float | None = None) -> Iterator[None]:
    inject_fault(conn, table, column, value, sqlstate, sleep_s)
    try:
        yield
    finally:
        clear_faults(conn)
