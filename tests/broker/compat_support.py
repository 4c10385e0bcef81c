"""Helpers for the stand-in's config/auth/rule tests: async deadline polling, a cuttable TCP proxy, configs."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from emqx.standin.config import BrokerConfig, load_config
from tests.conftest import free_port


async def eventually(predicate: Callable[[], Any], timeout: float = 15.0, message: str = "condition not met") -> Any:
    """Await until ``predicate()`` (sync or async) is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:.0f} s; last value: {value!r})")
        await asyncio.sleep(0.02)


class BackgroundLoop:
    """An asyncio loop in a thread, for a proxy beside a synchronous test (a broker in a subprocess)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_the_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.run(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``stop()`` closes the listener and every connection (an outage)."""

    def __init__(self, target_host: str, target_port: int, port: int) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers.discard(writer)
        self.writers.discard(up_writer)


def db_parts(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {"host": parts.hostname, "port": parts.port or 5432, "user": parts.username,
            "password": parts.password, "database": parts.path.lstrip("/")}


BASE_CONF = """
node { name = "emqx@127.0.0.1", cookie = "c", data_dir = "data" }
dashboard.listeners.http.bind = 0
authorization { no_match = deny, sources = [] }
"""


def write_conf(tmp_path: Path, body: str, name: str = "emqx.conf") -> Path:
    path = tmp_path / name
    path.write_text(BASE_CONF + body, encoding="utf-8")
    return path


def conf_from(tmp_path: Path, body: str, environ: dict[str, str] | None = None) -> BrokerConfig:
    return load_config(write_conf(tmp_path, body), environ or {})


def pg_connector_conf(url: str, name: str = "db", *, server: str | None = None, pool_size: int = 4,
                      health: str = "1s") -> str:
    p = db_parts(url)
    server = server or f"{p['host']}:{p['port']}"
    return f"""
connectors.pgsql.{name} {{
  server = "{server}"
  database = "{p['database']}"
  username = "{p['user']}"
  password = "{p['password']}"
  pool_size = {pool_size}
  resource_opts {{ health_check_interval = "{health}" }}
}}
"""


class FakeAuthService:
    """Records requests; ``reply`` decides the answer per request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.reply: Callable[[dict[str, Any]], web.StreamResponse] = lambda req: web.json_response({"result": "allow"})
        self.port = free_port()
        self.never = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        record = {"method": request.method, "path": request.path, "query": dict(request.query),
                  "headers": {k.lower(): v for k, v in request.headers.items()}, "raw": raw,
                  "json": json.loads(raw) if raw else None}
        self.requests.append(record)
        result = self.reply(record)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    async def __aenter__(self) -> FakeAuthService:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.never.set()
        await self.runner.cleanup()
