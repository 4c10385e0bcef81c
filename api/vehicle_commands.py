"""Commands to one vehicle: the single path that publishes them, and the outbox a vehicle on the HTTP fallback
fetches them from (docs/PROTOCOL.md → HTTP fallback).

``VehicleCommands.publish`` is how the api and its worker send a command on ``fleet/v1/{vid}/cmd`` (missions,
mission control, emergency stop and release, configuration). It records the command in ``vehicle_commands``
(committed before the publish, like every command's state) and then publishes it through the broker as before. A
vehicle that polls over HTTP gets every command it has not acknowledged, in order; while it polls (a poll within
``HTTP_ACTIVE_S``), a command the broker could not hand to an MQTT session still counts as delivered, since the
outbox delivers it — otherwise a mission for a vehicle on the fallback would be requeued forever.

Long-polls wait on ``CommandWaits``: one LISTEN connection per api process on ``fleet_vehicle_command`` (sent by
``vehicle_command_record``, sql/code/90_vehicle_commands.sql), on the server's event loop (api/asgi.py), so a waiting
poll costs a coroutine and an ``asyncio.Event``, never a request thread nor a database connection.
"""
from __future__ import annotations

import asyncio
import json
import logging

import asyncpg

from api import live
from fleetcore import topics
from fleetcore.db import Database
from fleetcore.emqx_api import EmqxApi, EmqxApiError, PublishResult
from fleetcore.logs import log_event

log = logging.getLogger("api.vehicle_commands")
CHANNEL = "fleet_vehicle_command"
HTTP_ACTIVE_S = 60.0       # a vehicle that polled this recently fetches its commands over HTTP (> MAX_WAIT_S)
MAX_WAIT_S = 30            # the longest a poll may wait (``wait``); under common proxies' idle timeouts
COMMAND_TTL_S = 2 * 3600   # a pending command is handed out this long: the broker's session expiry for queued QoS 1
POLL_LIMIT = 100           # commands per answer; the rest come with the next poll

# Pending commands of a vehicle, oldest first, as one JSON array of the envelopes as published (asyncpg: $n).
PENDING = """
SELECT COALESCE(json_agg(command ORDER BY id), '[]'::json)::text FROM (
    SELECT id, command FROM vehicle_commands
     WHERE vehicle_id = $1 AND acked_at IS NULL AND created_at > now() - make_interval(secs => $2)
     ORDER BY id LIMIT $3) pending
"""


class VehicleCommands:
    def __init__(self, db: Database, emqx: EmqxApi) -> None:
        self.db = db
        self.emqx = emqx

    def publish(self, vehicle_id: str, command: dict) -> PublishResult:
        """Record the command, then publish it on the vehicle's ``cmd`` topic (QoS 1). ``delivered`` is true when an
        MQTT session got it or the vehicle is fetching its commands over HTTP. Raises EmqxApiError when the broker
        cannot be reached and the vehicle is not on HTTP."""
        with self.db.transaction() as cur:
            cur.execute("SELECT vehicle_command_record(%s, %s, %s) AS over_http",
                        (vehicle_id, json.dumps(command), HTTP_ACTIVE_S))
            over_http = cur.fetchone()["over_http"]
        try:
            result = self.emqx.publish(topics.vehicle_topic(vehicle_id, topics.Kind.CMD), command, qos=1)
        except EmqxApiError as exc:
            if not over_http:
                raise
            log_event(log, "command.broker_unreachable", logging.WARNING, vehicle=vehicle_id,
                      msg_id=command["msg_id"], error=str(exc))
            return PublishResult(True, None)
        if not result.delivered and over_http:
            return PublishResult(True, result.message_id)
        return result


class CommandWaits:
    """Long-polls waiting for a vehicle's next command, woken by ``NOTIFY fleet_vehicle_command``."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.waiting: dict[str, set[asyncio.Event]] = {}
        self.pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._starting = asyncio.Lock()

    async def _ensure_started(self) -> asyncpg.Pool:
        async with self._starting:
            if self.pool is None or self._listener is None or self._listener.is_closed():
                await self._close()
                self.pool, self._listener = await live.open_listening_pool(
                    self.database_url, "api-commands", (CHANNEL,), self._notified, self._lost)
            return self.pool

    async def _close(self) -> None:
        listener, self._listener = self._listener, None
        pool, self.pool = self.pool, None
        live.close_listening_pool(pool, listener)

    def _lost(self) -> None:
        """Notifications may have been missed: wake every poll (each reads its commands again)."""
        log_event(log, "commands.listener_lost", logging.WARNING, polls=sum(map(len, self.waiting.values())))
        self._listener = None
        for events in self.waiting.values():
            for event in events:
                event.set()

    def _notified(self, _conn, _pid: int, _channel: str, vehicle_id: str) -> None:
        for event in self.waiting.get(vehicle_id, ()):
            event.set()

    async def poll(self, vehicle_id: str, wait_s: float) -> str:
        """The vehicle's pending commands as a JSON array; if there are none, wait up to ``wait_s`` for one.
        Registered before the first read, so a command recorded in between wakes it."""
        pool = await self._ensure_started()
        event = asyncio.Event()
        self.waiting.setdefault(vehicle_id, set()).add(event)
        try:
            pending = await pool.fetchval(PENDING, vehicle_id, float(COMMAND_TTL_S), POLL_LIMIT)
            if pending != "[]" or wait_s <= 0:
                return pending
            try:
                await asyncio.wait_for(event.wait(), wait_s)
            except TimeoutError:
                pass
            return await pool.fetchval(PENDING, vehicle_id, float(COMMAND_TTL_S), POLL_LIMIT)
        finally:
            events = self.waiting.get(vehicle_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self.waiting[vehicle_id]


_waits: dict[tuple[int, str], CommandWaits] = {}


def waits(database_url: str) -> CommandWaits:
    """This process's waits for the running event loop."""
    return live.per_loop(_waits, database_url, CommandWaits)
