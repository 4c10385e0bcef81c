"""The console's live updates: one hub per api process turns PostgreSQL notifications into server-sent events.

The hub holds one connection that LISTENs (``fleet_vehicle_state``, ``fleet_mission_event``, ``fleet_alarm``;
sql/code/81_live_events.sql and 80_alarms.sql), reads the rows a notification names once — the JSON built by
PostgreSQL (api/queries/live.py) — and hands each open stream the rows of the fleets its operator may see. It runs
on the api server's event loop (api/asgi.py): an open stream costs a queue and a coroutine, never a request thread.
Notifications are gathered for ``GATHER_S`` and read together (and those that arrive while a read is under way
go into the next one), so under load the hub reads, and each stream gets, a few batches a second instead of one
event per message.

It also keeps a copy of every vehicle's row, read whole when it starts listening and then kept current by those
same notifications (every change of a vehicle_state or vehicles row sends one), so a snapshot of 10,000 vehicles is
a join of strings rather than a query that builds 10,000 JSON arrays.

Events of a stream (``text/event-stream``; the data is one line of JSON):

* ``snapshot`` first: ``{"columns", "vehicles", "missions", "alarms"}``, everything the console shows, vehicles as
  compact arrays in the order of ``columns``;
* ``vehicles`` ``{"rows": [...]}``: the new state of vehicles (same arrays);
* ``mission`` ``{"event", "mission"}``: one appended mission event (a transition or a progress report) and the
  mission as it is now;
* ``alarm``: an alarm as it is now (sql/code/80_alarms.sql, ``alarm_json``);
* ``end`` ``{"reason"}`` before the server closes a stream: ``session_ended`` (logged out, deactivated),
  ``too_slow`` (the client fell ``QUEUE_LIMIT`` events behind) or ``restart`` (the hub lost its database
  connection). The browser reconnects, except after ``session_ended``.

Every event has an ``id``: the database time (epoch ms) its rows were read at. A browser that reconnects sends
the last one as ``Last-Event-ID`` and is sent, instead of a snapshot, everything that changed since that time
minus ``OVERLAP_S`` (a transaction that started before the read may commit after it): the mission events and
alarms, then one ``vehicles`` event (maybe empty) whose id is where a next resume starts. So events can arrive
twice: the console keeps vehicles and alarms by id and newest time, and mission events by id.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from api.queries import live as sql
from fleetcore.logs import log_event

log = logging.getLogger("api.live")
CHANNELS = ("fleet_vehicle_state", "fleet_mission_event", "fleet_alarm")
OVERLAP_S = 10             # a resumed stream is sent what changed since its last event minus this
QUEUE_LIMIT = 500          # events waiting for one stream; a client further behind is dropped and resumes
REPLAY_LIMIT = 5000        # mission events replayed to a resuming stream; more, and it gets a snapshot instead
SNAPSHOT_LIST_LIMIT = 500  # missions and alarms in a snapshot (vehicles: all)
READ_BATCH = 1000          # ids per read
GATHER_S = 0.05            # after a notification, wait this long for more: ≤ 20 reads and events per second


def sse(event: str, data: str, event_id: int | None = None) -> bytes:
    """One server-sent event; ``data`` is a single line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()


@dataclass(eq=False)
class Subscriber:
    """One open stream: the fleets its operator may see (None: every fleet) and what waits to be written."""
    fleets: frozenset[str] | None
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    end_reason: str | None = None

    def sees(self, fleet_id: str) -> bool:
        return self.fleets is None or fleet_id in self.fleets

    def offer(self, message: bytes) -> None:
        if self.end_reason:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.end("too_slow")

    def end(self, reason: str) -> None:
        """Close the stream after what it holds: the writer stops at the ``None``."""
        if self.end_reason:
            return
        self.end_reason = reason
        while self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class LiveHub:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.subscribers: set[Subscriber] = set()
        self.pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._pump: asyncio.Task | None = None
        self._starting = asyncio.Lock()
        self._wake = asyncio.Event()
        self._pending: dict[str, set] = {channel: set() for channel in CHANNELS}
        self.vehicles: dict[str, tuple[str, str, str]] = {}   # id → (fleet_id, status, row JSON)
        self.vehicles_at_ms = 0                                 # database time the copy is current as of

    # -- connections ------------------------------------------------------------------------------------------
    async def _ensure_started(self) -> asyncpg.Pool:
        async with self._starting:
            if self.pool is None or self._listener is None or self._listener.is_closed():
                await self._close_connections()
                self.pool, listener = await open_listening_pool(
                    self.database_url, "api-live", CHANNELS, self._notified,
                    lambda: self._restart("listener connection lost"))
                # read after listening: whatever commits later is notified, so the copy misses nothing
                async with self.pool.acquire() as conn:
                    self.vehicles_at_ms = await conn.fetchval(sql.NOW_MS)
                    rows = await conn.fetch(sql.VEHICLES_ALL)
                self.vehicles = {r["id"]: (r["fleet_id"], r["status"], r["row"]) for r in rows}
                self._listener = listener
                self._pump = asyncio.ensure_future(self._run())
                log_event(log, "live.started", channels=",".join(CHANNELS))
            return self.pool

    async def _close_connections(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        listener, self._listener = self._listener, None
        pool, self.pool = self.pool, None
        close_listening_pool(pool, listener)

    def _restart(self, why: str) -> None:
        """The hub missed or may miss notifications: end every stream (each resumes from its last event id) and
        connect again with the next stream."""
        log_event(log, "live.restart", logging.WARNING, reason=why, streams=len(self.subscribers))
        for subscriber in list(self.subscribers):
            subscriber.end("restart")
        self.subscribers.clear()
        for pending in self._pending.values():
            pending.clear()
        if self._listener is not None and not self._listener.is_closed():
            self._listener.terminate()
        self._listener = None

    # -- streams ----------------------------------------------------------------------------------------------
    async def open(self, fleets: frozenset[str] | None, since_ms: int | None) -> tuple[Subscriber, list[bytes]]:
        """Register a stream, then read what it starts with: a snapshot, or the changes since ``since_ms``.
        Registered first, so nothing that commits in between is lost (at worst it arrives twice)."""
        pool = await self._ensure_started()
        subscriber = Subscriber(fleets)
        self.subscribers.add(subscriber)
        try:
            async with pool.acquire() as conn:
                first = await (self._resume(conn, subscriber, since_ms) if since_ms is not None else
                               self._snapshot(conn, subscriber))
        except BaseException:
            self.subscribers.discard(subscriber)
            raise
        return subscriber, first

    def close(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    async def _snapshot(self, conn: asyncpg.Connection, subscriber: Subscriber) -> list[bytes]:
        fleets = None if subscriber.fleets is None else sorted(subscriber.fleets)
        lists = await conn.fetchval(sql.SNAPSHOT_LISTS, fleets, SNAPSHOT_LIST_LIMIT)
        # the copy as it is now, on the event loop with no await in between: every later change is queued for
        # this subscriber already, and its id is no later than anything the snapshot holds
        rows = ",".join(row for fleet, status, row in self.vehicles.values()
                        if status != "decommissioned" and subscriber.sees(fleet))
        body = f'{{"columns":{json.dumps(sql.VEHICLE_COLUMNS)},"vehicles":[{rows}],{lists[1:]}'
        return [sse("snapshot", body, self.vehicles_at_ms)]

    async def _resume(self, conn: asyncpg.Connection, subscriber: Subscriber, since_ms: int) -> list[bytes]:
        fleets = None if subscriber.fleets is None else sorted(subscriber.fleets)
        at_ms = await conn.fetchval(sql.NOW_MS)
        since = await conn.fetchval("SELECT to_timestamp($1::double precision / 1000) - make_interval(secs => $2)",
                                    since_ms, OVERLAP_S)
        events = await conn.fetch(sql.MISSION_EVENTS_SINCE, since, fleets, REPLAY_LIMIT + 1)
        if len(events) > REPLAY_LIMIT:
            return await self._snapshot(conn, subscriber)  # away too long: start over
        vehicles = await conn.fetch(sql.VEHICLES_SINCE, since, fleets)
        alarms = await conn.fetch(sql.ALARMS_SINCE, since, fleets)
        messages = [sse("mission", r["row"], at_ms) for r in events]
        messages += [sse("alarm", r["row"], at_ms) for r in alarms]
        # last, and always (maybe empty): its id is where the next resume starts
        return [*messages, sse("vehicles", _rows_json(r["row"] for r in vehicles), at_ms)]

    async def check_session(self, session_id: str, user_id: int) -> tuple[bool, frozenset[str] | None]:
        """Whether the stream's login session is still good, and the fleets its user may see now."""
        pool = await self._ensure_started()
        row = await pool.fetchrow(sql.SESSION, session_id, user_id)
        if row is None or not row["valid"]:
            return False, frozenset()
        return True, (None if row["role"] == "admin" else frozenset(row["fleets"]))

    # -- notifications ----------------------------------------------------------------------------------------
    def _notified(self, _conn, _pid: int, channel: str, payload: str) -> None:
        try:
            body = json.loads(payload)
            if channel == "fleet_vehicle_state":
                self._pending[channel].update(str(v) for v in body["vehicle_ids"])
            elif channel == "fleet_mission_event":
                self._pending[channel].add(int(body["id"]))
            else:
                self._pending[channel].add(int(body["alarm_id"]))
        except (ValueError, KeyError, TypeError):
            log_event(log, "live.bad_notification", logging.WARNING, channel=channel, payload=payload[:200])
            return
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(GATHER_S)
            self._wake.clear()
            taken = self._pending
            self._pending = {channel: set() for channel in CHANNELS}
            try:
                await self._publish(taken)
            except asyncio.CancelledError:
                raise
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                self._restart(f"read failed: {exc}")
                return
            except Exception:  # a bug must not silence every console: restart and say so
                log.exception("live update failed", extra={"event": "live.crash"})
                self._restart("bug")
                return

    async def _publish(self, taken: dict[str, set]) -> None:
        assert self.pool is not None
        vehicle_ids = sorted(taken["fleet_vehicle_state"])
        async with self.pool.acquire() as conn:
            at_ms = await conn.fetchval(sql.NOW_MS)
            read = []
            for start in range(0, len(vehicle_ids), READ_BATCH):
                read += await conn.fetch(sql.VEHICLES_BY_ID, vehicle_ids[start:start + READ_BATCH])
            if self.subscribers:
                events = await _read(conn, sql.MISSION_EVENTS_BY_ID, sorted(taken["fleet_mission_event"]))
                alarms = await _read(conn, sql.ALARMS_BY_ID, sorted(taken["fleet_alarm"]))
            else:
                events = alarms = []
        for vehicle_id in vehicle_ids:
            self.vehicles.pop(vehicle_id, None)   # gone, unless read again just now
        self.vehicles.update((r["id"], (r["fleet_id"], r["status"], r["row"])) for r in read)
        self.vehicles_at_ms = at_ms
        vehicles = [(r["fleet_id"], r["row"]) for r in read]
        for subscriber in list(self.subscribers):
            mine = [row for fleet, row in vehicles if subscriber.sees(fleet)]
            if mine:
                subscriber.offer(sse("vehicles", _rows_json(mine), at_ms))
            for fleet, row in events:
                if subscriber.sees(fleet):
                    subscriber.offer(sse("mission", row, at_ms))
            for fleet, row in alarms:
                if subscriber.sees(fleet):
                    subscriber.offer(sse("alarm", row, at_ms))
            if subscriber.end_reason:
                self.subscribers.discard(subscriber)


async def _read(conn: asyncpg.Connection, query: str, ids: list) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for start in range(0, len(ids), READ_BATCH):
        rows += [(r["fleet_id"], r["row"]) for r in await conn.fetch(query, ids[start:start + READ_BATCH])]
    return rows


def _rows_json(rows: Iterable[str]) -> str:
    return '{"rows":[' + ",".join(rows) + "]}"


T = TypeVar("T")


async def open_listening_pool(database_url: str, name: str, channels: Iterable[str],
                              on_notify: Callable[..., None], on_lost: Callable[[], None]
                              ) -> tuple[asyncpg.Pool, asyncpg.Connection]:
    """A small pool for queries and a connection of its own that LISTENs on ``channels`` (``on_notify`` per
    notification; ``on_lost`` once that connection ends: notifications may have been missed). The console's hub and
    the vehicles' command waits each keep one per event loop."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4,
                                     server_settings={"application_name": name})
    try:
        listener = await asyncpg.connect(database_url, server_settings={"application_name": f"{name}-listen"})
        for channel in channels:
            await listener.add_listener(channel, on_notify)
    except BaseException:
        pool.terminate()
        raise
    listener.add_termination_listener(lambda _conn: on_lost())
    return pool, listener


def close_listening_pool(pool: asyncpg.Pool | None, listener: asyncpg.Connection | None) -> None:
    """End both at once (``open_listening_pool``)."""
    if listener is not None and not listener.is_closed():
        listener.terminate()
    if pool is not None:
        pool.terminate()


def per_loop(registry: dict, database_url: str, factory: Callable[[str], T]) -> T:
    """One ``factory(database_url)`` per running event loop and database in this process, made on first use (by
    the first request that needs it, not by ``create_app``): the console's hub, the vehicles' command waits."""
    key = (id(asyncio.get_running_loop()), database_url)
    if key not in registry:
        registry[key] = factory(database_url)
    return registry[key]


_hubs: dict[tuple[int, str], LiveHub] = {}


def hub(database_url: str) -> LiveHub:
    """This process's hub for the running event loop."""
    return per_loop(_hubs, database_url, LiveHub)


async def stream(database_url: str, fleets: frozenset[str] | None, since_ms: int | None, *, session_id: str,
                 user_id: int, keepalive_s: float, recheck_s: float) -> AsyncGenerator[bytes, None]:
    """One console's stream: its first events, then whatever the hub offers, a keepalive comment when idle, and
    every ``recheck_s`` a look at the login session (logging out ends the stream; fleet changes apply)."""
    the_hub = hub(database_url)
    subscriber, first = await the_hub.open(fleets, since_ms)
    loop = asyncio.get_running_loop()
    next_check = loop.time() + recheck_s
    try:
        yield b": connected\n\n"
        for opening in first:
            yield opening
        while True:
            timeout = max(0.0, min(keepalive_s, next_check - loop.time()))
            message: bytes | None
            try:
                message = await asyncio.wait_for(subscriber.queue.get(), timeout)
            except TimeoutError:
                message = b": keepalive\n\n"
            if message is None:
                yield sse("end", json.dumps({"reason": subscriber.end_reason}))
                return
            yield message
            if loop.time() >= next_check:
                valid, visible = await the_hub.check_session(session_id, user_id)
                if not valid:
                    yield sse("end", '{"reason":"session_ended"}')
                    return
                subscriber.fleets = visible
                next_check = loop.time() + recheck_s
    finally:
        the_hub.close(subscriber)
