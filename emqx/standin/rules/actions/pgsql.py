"""``pgsql`` connector and action: the action's SQL as one prepared statement, batched with executemany.

The ``${var}`` placeholders become ``$1…$n`` (templates.SqlTemplate). Values are sent typed as EMQX's epgsql
driver would accept them for the parameter types PostgreSQL inferred (docs/EMQX.md §5.2): text takes strings and
numbers (converted), integer parameters need integers, float parameters numbers, json/jsonb strings, undefined
→ NULL; a value of the wrong type fails that message (EMQX ``bad_param``, not retried). A batch runs in one
transaction; the futures resolve after COMMIT. Connection-level failures are retried (base.py); the pool
reconnects by itself, and a health check reports the connector status.
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
# SQLSTATE classes/codes that mean "the database is not (yet) able to take this": retry within request_ttl.
RECOVERABLE_CLASSES = {"08", "53", "57", "58", "40", "55", "28", "3D", "HV"}
RECOVERABLE_CODES = {"42P01", "42501", "3F000", "42883"}


def is_recoverable(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.exceptions.DataError):
        return False
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError, ConnectionError,
                        asyncpg.exceptions.InterfaceError, asyncpg.exceptions.InternalClientError)):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        code = getattr(exc, "sqlstate", None) or ""
        return code[:2] in RECOVERABLE_CLASSES or code in RECOVERABLE_CODES
    return False


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

    async def execute(self, batch: list[Item]) -> list[BaseException | None]:
        connector = self.connector
        try:
            pool = await connector._ensure_pool()  # noqa: SLF001 - the connector's own actions share its pool
            async with pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                if self.converters is None:
                    await self.describe(conn)
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
                timeout = max(5.0, min(self.opts.request_ttl_s, 60.0))
                try:
                    if len(rows) == 1:
                        await conn.execute(self.sql, *rows[0], timeout=timeout)
                    else:
                        async with conn.transaction():
                            await conn.executemany(self.sql, rows, timeout=timeout)
                except Exception as exc:  # classified below
                    if is_recoverable(exc):
                        conn.terminate()          # never hand a half-broken connection back to the pool
                        raise
                    if len(rows) == 1:
                        results[positions[0]] = Unrecoverable(f"{type(exc).__name__}: {exc}")
                        return results
                    # One bad row must not take the batch down with it: run the rows one by one.
                    for index, row in zip(positions, rows, strict=True):
                        try:
                            await conn.execute(self.sql, *row, timeout=timeout)
                        except Exception as row_exc:
                            if is_recoverable(row_exc):
                                conn.terminate()
                                raise
                            results[index] = Unrecoverable(f"{type(row_exc).__name__}: {row_exc}")
                connector.mark_ok()
                return results
        except Exception as exc:
            if is_recoverable(exc):
                connector.mark_failed(exc)
                raise Recoverable(f"{type(exc).__name__}: {exc}") from exc
            raise
