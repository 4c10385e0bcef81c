"""Fixtures for the SQL ingest tests: a fresh migrated database per test, one active vehicle, and an ``Inbox``
that inserts exactly like the broker's pgsql actions do — as role fleet_ingest, into the ``ingest`` views."""
from __future__ import annotations

import base64
import itertools
import json
import os
import select
import time
import uuid

import psycopg2
import psycopg2.extras
import pytest

from fleetctl import dbadmin
from tests.support.waiting import wait_until

FLEET = "fleet-a"
VEHICLE = "veh-1"
OTHER_VEHICLE = "veh-2"
_module_counter = itertools.count(1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def envelope(data: dict | None = None, *, seq: int = 1, ts: int | None = None, msg_id: str | None = None,
             **overrides) -> dict:
    """A vehicle → backend envelope (docs/PROTOCOL.md, Envelope); ``overrides`` replace or add top-level fields."""
    message = {"v": 1, "msg_id": str(uuid.uuid4()) if msg_id is None else msg_id, "seq": seq,
               "ts": now_ms() if ts is None else ts,
               "data": {"lat": 48.137, "lon": 11.575} if data is None else data}
    message.update(overrides)
    return message


def b64(payload: dict | list | str | bytes | None) -> str | None:
    if payload is None:
        return None
    if isinstance(payload, (dict, list)):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return base64.b64encode(payload).decode("ascii")


class Inbox:
    """The broker's six INSERT statements (emqx/emqx.conf), executed as fleet_ingest. Telemetry is queued
    (sql/100_telemetry_queue.sql) and applied by the worker's ``ingest.drain_telemetry()``: ``telemetry()`` drains
    the queue right after its INSERT, as the worker would, on the app role's connection ``drain_conn``. Pass
    ``drain=False`` to leave it queued."""

    def __init__(self, conn, drain_conn=None) -> None:
        self.conn = conn
        self.drain_conn = drain_conn

    def _message(self, kind: str, payload, *, clientid: str = VEHICLE, topic: str | None = None,
                 received_at_ms: int | None = None, raw_b64: str | None = None) -> None:
        topic = topic if topic is not None else f"fleet/v1/{clientid}/{kind}"
        with self.conn.cursor() as cur:
            cur.execute(f"INSERT INTO ingest.{kind}_inbox (clientid, topic, payload_b64, received_at_ms) "
                        "VALUES (%s, %s, %s, %s::bigint)",
                        (clientid, topic, raw_b64 if raw_b64 is not None else b64(payload),
                         received_at_ms if received_at_ms is not None else now_ms()))

    def telemetry(self, payload, *, drain: bool = True, **kw) -> None:
        self._message("telemetry", payload, **kw)
        if drain:
            self.drain()

    def drain(self, set_size: int = 1000) -> dict:
        """What the worker does: apply everything queued, one set of up to ``set_size`` at a time; the sums."""
        total = {"taken": 0, "in_sets": 0, "one_by_one": 0}
        with self.drain_conn.cursor() as cur:
            while True:
                cur.execute("SELECT taken, in_sets, one_by_one FROM ingest.drain_telemetry(%s)", (set_size,))
                taken, in_sets, one_by_one = cur.fetchone()
                total = {"taken": total["taken"] + taken, "in_sets": total["in_sets"] + in_sets,
                         "one_by_one": total["one_by_one"] + one_by_one}
                if taken == 0:
                    return total

    def status(self, payload, **kw) -> None:
        self._message("status", payload, **kw)

    def mission(self, payload, **kw) -> None:
        self._message("mission", payload, **kw)

    def connection(self, payload, **kw) -> None:
        self._message("connection", payload, **kw)

    def presence(self, event: str, *, clientid: str = VEHICLE, reason: str | None = None, at_ms: int | None = None,
                 connected_at_ms: int | None = None, role: str | None = "vehicle") -> None:
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO ingest.presence_inbox (clientid, event, reason, at_ms, connected_at_ms, role) "
                        "VALUES (%s, %s, %s, %s::bigint, %s::bigint, %s)",
                        (clientid, event, reason, at_ms if at_ms is not None else now_ms(), connected_at_ms, role))

    def authz_denied(self, topic: str, action: str, *, clientid: str = VEHICLE) -> None:
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO ingest.authz_denied_inbox (clientid, topic, action, at_ms) "
                        "VALUES (%s, %s, %s, %s::bigint)", (clientid, topic, action, now_ms()))


@pytest.fixture(scope="module")
def module_db_url(stack, pg_admin_url, template_db):
    """Like ``db_url``, but shared by the tests of one module (for long tables of cases that leave no state)."""
    from tests.conftest import cloned_database
    with cloned_database(stack, pg_admin_url, template_db, f"t_mod_{os.getpid()}_{next(_module_counter)}") as url:
        yield url


def ingest_url_for(stack, url: str) -> str:
    return stack.postgres.url(dbadmin.INGEST_ROLE, stack.secrets["FLEET_INGEST_DB_PASSWORD"], url.rsplit("/", 1)[1])


@pytest.fixture
def ingest_url(stack, db_url) -> str:
    return ingest_url_for(stack, db_url)


@pytest.fixture
def ingest_conn(ingest_url):
    """An autocommit connection as the broker's role, fleet_ingest (each INSERT is its own transaction)."""
    connection = psycopg2.connect(ingest_url)
    connection.autocommit = True
    yield connection
    connection.close()


@pytest.fixture
def inbox(ingest_conn, conn) -> Inbox:
    return Inbox(ingest_conn, conn)


@pytest.fixture
def vehicles(conn) -> list[str]:
    """A fleet with two active vehicles (as after registration)."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO fleets (id, name) VALUES (%s, 'Fleet A')", (FLEET,))
        for vid in (VEHICLE, OTHER_VEHICLE):
            cur.execute("INSERT INTO vehicles (id, fleet_id, status, registered_at) VALUES (%s, %s, 'active', now())",
                        (vid, FLEET))
    return [VEHICLE, OTHER_VEHICLE]


@pytest.fixture
def q(conn):
    """Run a query as the app role and return all rows as dicts."""
    def run(sql: str, params=None) -> list[dict]:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, params)
            return [dict(row) for row in cur.fetchall()] if cur.description else []
    return run


class Listener:
    """LISTEN on a second connection. ``received()`` returns what was notified so far, exactly: it sends a marker
    NOTIFY after everything the test did and waits for it (notifications arrive in commit order)."""

    def __init__(self, url: str, channel: str) -> None:
        self.channel = channel
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute(f"LISTEN {channel}")
        self.sender = psycopg2.connect(url)
        self.sender.autocommit = True
        self._markers = 0

    def received(self) -> list[dict]:
        self._markers += 1
        marker = {"marker": self._markers}
        with self.sender.cursor() as cur:
            cur.execute("SELECT pg_notify(%s, %s)", (self.channel, json.dumps(marker)))
        got: list[dict] = []

        def marker_arrived() -> bool:
            select.select([self.conn], [], [], 0.05)
            self.conn.poll()
            while self.conn.notifies:
                got.append(json.loads(self.conn.notifies.pop(0).payload))
            return marker in got
        wait_until(marker_arrived, timeout=5, message=f"marker on {self.channel}")
        return got[:got.index(marker)]

    def close(self) -> None:
        self.conn.close()
        self.sender.close()


@pytest.fixture
def listen(db_url):
    opened: list[Listener] = []

    def make(channel: str) -> Listener:
        opened.append(Listener(db_url, channel))
        return opened[-1]
    yield make
    for listener in opened:
        listener.close()
