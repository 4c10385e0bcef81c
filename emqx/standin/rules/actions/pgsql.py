"""``pgsql`` connector and action: the action's SQL as one prepared statement, batched with executemany.

The ``${var}`` placeholders become ``$1…$n`` (templates.SqlTemplate). Values are sent typed as EMQX's epgsql
driver would accept them for the parameter types PostgreSQL inferred (docs/EMQX.md §5.2): text takes strings and
numbers (converted), integer parameters need integers, float parameters numbers, json/jsonb strings, undefined
→ NULL; a value of the wrong type fails that message (EMQX ``bad_param``, not retried).

What EMQX 5.10.4 does with a batch (apps/emqx_postgresql/src/emqx_postgresql.erl), and so does this action:
``on_batch_query`` runs it as ``epgsql:execute_batch`` — the prepared statement once per row, in one implicit
transaction — and ``handle_batch_result``/``handle_result`` turn *every* error PostgreSQL reports (constraint,
lock or statement timeout, deadlock, serialization failure, an exception raised in a trigger, the server shutting
down under a running statement) and a connection lost under a running statement (epgsql's ``{error,
sock_closed}``) into ``{unrecoverable_error, …}``: the whole batch is dropped and counted ``failed``, never
retried. Only a batch that could not be sent — no connection to be had (``{error, disconnected}``,
``ecpool_empty``), the connector down — is retried (nack in emqx_resource_buffer_worker), until ``request_ttl``.
A statement has no client-side timeout (the buffer worker waits for epgsql); only PostgreSQL's own
``statement_timeout``/``lock_timeout`` end it, and that error drops the batch.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from fleetcore.logs import log_event

from ...config import ActionConfig, PgsqlConnectorConfig
from ...templates import SqlTemplate
from .base import BufferedAction, Item, Recoverable, Unrecoverable

log = logging.getLogger("emqx.standin.rules.pgsql")

CONNECT_TIMEOUT_S = 5.0

# No connection to be had (refused, timed out, closed before the statement was sent): EMQX's recoverable errors —
# ecpool_empty, {error, disconnected}, a connector that is not connected — retried until request_ttl.
CONNECTION_ERRORS = (OSError, TimeoutError, asyncio.TimeoutError, ConnectionError,
                     asyncpg.exceptions.InterfaceError, asyncpg.exceptions.InternalClientError)


# -- value conversion per parameter type ------------------------------------------------------------------

class BadParam(Unrecoverable):
    pass


def _text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadParam("bad_param: binary value is not UTF-8 text") from None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def _integer(value: Any) -> Any:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise BadParam(f"bad_param: integer parameter got {type(value).__name__}")


def _float(value: Any) -> Any:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value if value is None else float(value)
    raise BadParam(f"bad_param: float parameter got {type(value).__name__}")


def _numeric(value: Any) -> Any:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise BadParam(f"bad_param: numeric parameter got {type(value).__name__}")


def _boolean(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    raise BadParam(f"bad_param: boolean parameter got {type(value).__name__}")


def _json(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return _text(value)
    return json.dumps(value, separators=(",", ":"))


def _bytea(value: Any) -> Any:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise BadParam(f"bad_param: bytea parameter got {type(value).__name__}")


def _no_epoch(value: Any) -> Any:
    if value is None or not isinstance(value, (int, float, str, bytes)):
        return value
    raise BadParam("bad_param: timestamp parameters do not take epoch numbers or strings; "
                   "convert in SQL with to_timestamp(${var}::bigint / 1000.0)")


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "text": _text, "varchar": _text, "bpchar": _text, "name": _text, "unknown": _text, "char": _text,
    "int2": _integer, "int4": _integer, "int8": _integer, "oid": _integer,
    "float4": _float, "float8": _float, "numeric": _numeric,
    "bool": _boolean, "json": _json, "jsonb": _json, "bytea": _bytea, "uuid": _text,
    "timestamp": _no_epoch, "timestamptz": _no_epoch, "date": _no_epoch,
}


def converter_for(type_name: str) -> Callable[[Any], Any]:
    return _CONVERTERS.get(type_name, lambda v: v)


# -- connector ------------------------------------------------------------------------------------------------

class PgsqlConnector:
    """One asyncpg pool (``pool_size`` connections) and its health check."""

    def __init__(self, config: PgsqlConnectorConfig) -> None:
        self.config = config
        self.name = config.name
        self.pool: asyncpg.Pool | None = None
        self.status = "connecting"
        self.actions: list[PgsqlAction] = []
        self._health_task: asyncio.Task | None = None
        self._pool_lock = asyncio.Lock()

    async def start(self) -> None:
        await self._ensure_pool()
        await self.health_check()
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop(), name=f"pgsql:{self.name}")

    async def stop(self) -> None:
        if self._health_task:
            self._health_task.cancel()
            try:
                await self._health_task
            except asyncio.CancelledError:
                pass
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 5)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                self.pool.terminate()
            self.pool = None

    async def _ensure_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            async with self._pool_lock:
                if self.pool is None:
                    c = self.config
                    # min_size=0: creating the pool never needs the server, connections are opened on demand.
                    self.pool = await asyncpg.create_pool(
                        host=c.host, port=c.port, user=c.username, password=c.password or None, database=c.database,
                        min_size=0, max_size=c.pool_size, timeout=CONNECT_TIMEOUT_S,
                        statement_cache_size=0 if c.disable_prepared_statements else 100,
                        max_inactive_connection_lifetime=300, server_settings={"application_name": "emqx-standin"})
        return self.pool

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_check_interval_s)
            await self.health_check()

    async def health_check(self) -> bool:
        """SELECT 1 and (re)describe every action's statement, as EMQX does; updates ``status``."""
        try:
            pool = await self._ensure_pool()
            async with pool.acquire(timeout=self.config.health_check_timeout_s) as conn:
                await conn.fetchval("SELECT 1", timeout=self.config.health_check_timeout_s)
                for action in self.actions:
                    await action.describe(conn)
        except Exception as exc:  # noqa: BLE001 - every failure is a status, never a crash
            self._set_status("disconnected" if self.status != "connecting" else "connecting", exc)
            return False
        self._set_status("connected")
        return True

    def _set_status(self, status: str, exc: BaseException | None = None) -> None:
        if status != self.status:
            level = logging.INFO if status == "connected" else logging.WARNING
            log_event(log, "pgsql.connector_status", level=level, connector=self.name, status=status,
                      error=(f"{type(exc).__name__}: {exc}"[:200] if exc else None))
            self.status = status

    def mark_failed(self, exc: BaseException) -> None:
        if self.status == "connected":
            self._set_status("disconnected", exc)

    def mark_ok(self) -> None:
        if self.status != "connected":
            self._set_status("connected")


class PgsqlAction(BufferedAction):
    type = "pgsql"
    always_sync = True      # emqx_postgresql: callback_mode() -> always_sync

    def __init__(self, config: ActionConfig, connector: PgsqlConnector) -> None:
        super().__init__(config, connector.config.pool_size)
        self.connector = connector
        self.template: SqlTemplate = config.parameters["sql"]
        self.sql = self.template.sql
        self.converters: list[Callable[[Any], Any]] | None = None
        connector.actions.append(self)

    @property
    def status(self) -> str:
        return self.connector.status

    def render(self, output: dict[str, Any]) -> tuple[Any, int]:
        values = self.template.values(output)
        size = 64
        for value in values:
            if isinstance(value, (str, bytes)):
                size += len(value)
            else:
                size += 8
        return values, size

    async def describe(self, conn: asyncpg.Connection) -> None:
        """Learn the parameter types PostgreSQL infers for the statement (once; health checks repeat it)."""
        statement = await conn.prepare(self.sql)
        self.converters = [converter_for(t.name) for t in statement.get_parameters()]

    def _convert(self, values: list[Any]) -> tuple:
        converters = self.converters
        assert converters is not None
        return tuple(conv(v) for conv, v in zip(converters, values, strict=True))

    async def _run(self, conn: asyncpg.Connection, batch: list[Item]) -> list[BaseException | None]:
        connector = self.connector
        if self.converters is None:
            try:
                await self.describe(conn)
            except asyncpg.PostgresError as exc:
                # PostgreSQL refuses the statement (undefined table…): emqx_postgresql on_sql_query makes
                # undefined_table unrecoverable, like every error the server reports.
                return [Unrecoverable(f"{type(exc).__name__} {exc.sqlstate}: {exc}")] * len(batch)
        results: list[BaseException | None] = [None] * len(batch)
        rows, positions = [], []
        for index, item in enumerate(batch):
            try:
                rows.append(self._convert(item.payload))
                positions.append(index)
            except BadParam as exc:
                results[index] = exc
        if not rows:
            return results
        try:
            if len(rows) == 1:
                await conn.execute(self.sql, *rows[0])
            else:
                async with conn.transaction():
                    await conn.executemany(self.sql, rows)
        except (asyncpg.PostgresError, *CONNECTION_ERRORS) as exc:
            # The batch reached PostgreSQL and failed: an error it reported (emqx_postgresql
            # handle_batch_result / handle_result) or the connection lost under the running statement
            # (epgsql answers {error, sock_closed}, which handle_result makes unrecoverable too). EMQX
            # drops the whole batch as failed; it is not retried.
            error = Unrecoverable(f"{type(exc).__name__} {getattr(exc, 'sqlstate', '') or ''}: {exc}")
            for index in positions:
                results[index] = error
            if not isinstance(exc, asyncpg.PostgresError) or conn.is_closed() or \
                    (getattr(exc, "sqlstate", "") or "").startswith(("08", "57P")):
                conn.terminate()          # never hand a broken connection back to the pool
                connector.mark_failed(exc)
            return results
        connector.mark_ok()
        return results

    async def execute(self, batch: list[Item]) -> list[BaseException | None]:
        connector = self.connector
        outcome: list[BaseException | None] | None = None
        try:
            pool = await connector._ensure_pool()  # noqa: SLF001 - the connector's own actions share its pool
            # No acquire timeout: an EMQX buffer worker waits for its ecpool connection however busy it is.
            async with pool.acquire() as conn:
                outcome = await self._run(conn, batch)
            return outcome
        except CONNECTION_ERRORS as exc:
            connector.mark_failed(exc)
            if outcome is not None:
                # The statement's outcome is known; only handing the connection back to the pool failed (it was
                # killed after the COMMIT). EMQX has the answer already: retrying would store the batch twice.
                return outcome
            raise Recoverable(f"{type(exc).__name__}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            # Refused while connecting (server starting up, too many connections, bad password): EMQX's ecpool
            # worker is then not connected, and its requests wait for it.
            connector.mark_failed(exc)
            if outcome is not None:
                return outcome            # as above: only handing the connection back failed
            raise Recoverable(f"{type(exc).__name__}: {exc}") from exc
