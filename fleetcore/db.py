"""PostgreSQL access for the Flask services and the tooling (psycopg2).

One ``Database`` per process holds a bounded, thread-safe pool. ``transaction()`` is the unit of work:
it commits on success, rolls back on any exception, and returns the connection to the pool; a
connection that broke (server restart) is discarded instead of being handed out again.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool

# Python dicts/lists passed as query parameters are sent as JSON (jsonb columns).
psycopg2.extensions.register_adapter(dict, psycopg2.extras.Json)


class Database:
    """A bounded pool of connections to one database URL."""

    def __init__(self, url: str, max_connections: int = 10, application_name: str = "fleet",
                 connect_timeout: int = 5) -> None:
        self.url = url
        self._pool = psycopg2.pool.ThreadedConnectionPool(
            0, max_connections, url, application_name=application_name, connect_timeout=connect_timeout)
        # Connect lazily (minconn 0 above: a service starts even while the database is down), but keep every
        # returned connection: psycopg2 closes a returned connection whenever the pool holds >= minconn idle
        # ones, which with minconn 0 meant a new connection (~20 ms) for every transaction.
        self._pool.minconn = max_connections
        # ThreadedConnectionPool raises when exhausted; the semaphore makes callers wait their turn instead.
        self._slots = threading.BoundedSemaphore(max_connections)

    @contextmanager
    def connection(self, timeout: float = 30.0) -> Iterator[psycopg2.extensions.connection]:
        if not self._slots.acquire(timeout=timeout):
            raise psycopg2.OperationalError(f"no database connection free within {timeout:.0f} s")
        conn = None
        try:
            conn = self._checkout()
            yield conn
        except BaseException:
            if conn is not None:
                broken = conn.closed != 0
                if not broken:
                    try:
                        conn.rollback()
                    except psycopg2.Error:
                        broken = True
                self._pool.putconn(conn, close=broken)
                conn = None
            raise
        finally:
            if conn is not None:
                if conn.closed:
                    self._pool.putconn(conn, close=True)
                else:
                    if conn.status != psycopg2.extensions.STATUS_READY:
                        conn.rollback()
                    self._pool.putconn(conn)
            self._slots.release()

    def _checkout(self) -> psycopg2.extensions.connection:
        """A pooled connection that is still alive. A server restart or pg_terminate_backend leaves idle pooled
        connections dead. poll() reads what the server sent without a round trip: the first one consumes its
        "FATAL: terminating connection" notice, the second meets the closed socket and raises. Dead connections
        are dropped here instead of failing the caller's first statement."""
        for _ in range(self._pool.maxconn + 1):
            conn = self._pool.getconn()
            try:
                if not conn.closed:
                    del conn.notices[:]          # an idle pooled connection's old notices mean nothing
                    conn.poll()
                    conn.poll()
                    if not any(n.startswith("FATAL") for n in conn.notices):
                        return conn
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                pass
            self._pool.putconn(conn, close=True)
        return self._pool.getconn()

    @contextmanager
    def transaction(self, dict_rows: bool = True) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor inside one transaction: commit on success, rollback on error."""
        cursor_factory = psycopg2.extras.RealDictCursor if dict_rows else None
        with self.connection() as conn:
            with conn.cursor(cursor_factory=cursor_factory) as cur:
                yield cur
            conn.commit()

    def ping(self) -> bool:
        """True when the database answers a trivial query (used by health checks)."""
        try:
            with self.transaction(dict_rows=False) as cur:
                cur.execute("SELECT 1")
                return cur.fetchone() == (1,)
        except psycopg2.Error:
            return False

    def close(self) -> None:
        self._pool.closeall()


def connect(url: str, autocommit: bool = False, application_name: str = "fleet",
            connect_timeout: int = 5) -> psycopg2.extensions.connection:
    """A single connection outside any pool (migrations, tooling)."""
    conn = psycopg2.connect(url, application_name=application_name, connect_timeout=connect_timeout)
    conn.autocommit = autocommit
    return conn
