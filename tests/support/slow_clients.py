"""Slow and half-open HTTP clients (slowloris) for the abuse tests: many connections held open from a background
asyncio loop, each stuck somewhere in its request, and a record of which ones the server closed, when, and with
what answer.

Kinds of connection (``SlowClients(host, port, {"idle": 70, "headers": 70, "body": 60})``):

* ``idle`` — connects and sends nothing;
* ``headers`` — sends a request line and headers one byte every ``interval`` seconds and never finishes them;
* ``body`` — sends complete headers announcing a small body, then the body one byte every ``interval`` seconds,
  never the last byte.

Like a real attacker, the clients open a new connection of the same kind whenever the server closes one, so the
count stays up for as long as the attack lasts. Everything stays on loopback and is closed by ``close()`` (or
at the end of the ``with`` block).
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass


@dataclass
class SlowConnection:
    kind: str
    generation: int                            # 0 = opened at the start, 1 = its first replacement, …
    opened_at: float = 0.0
    closed_by_server_at: float | None = None   # monotonic time the server closed it (EOF or reset)
    answer: bytes = b""                        # what the server sent before closing (e.g. a 408), if anything

    @property
    def status(self) -> int | None:
        parts = self.answer.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else None


class SlowClients:
    def __init__(self, host: str, port: int, counts: dict[str, int], *, path: str = "/", method: str = "POST",
                 interval: float = 0.5, body_length: int = 1000, headers: dict[str, str] | None = None) -> None:
        self.host, self.port, self.path, self.method, self.interval = host, port, path, method, interval
        self.body_length = body_length   # announced by the body kind: small, so no size limit refuses it
        self.headers = headers or {}
        self.counts = counts
        self.connections: list[SlowConnection] = []
        self.failed_connects = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="slow-clients", daemon=True)
        self._tasks: set[asyncio.Task] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._closing = False

    # -- public ---------------------------------------------------------------------------------------------
    def __enter__(self) -> SlowClients:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self, timeout: float = 30.0) -> None:
        """Connect every client (all of them are connected when this returns) and start trickling."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open_all(), self._loop).result(timeout)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def first(self, kind: str) -> list[SlowConnection]:
        """The connections of ``kind`` opened at the start (not the replacements)."""
        return [c for c in list(self.connections) if c.kind == kind and c.generation == 0]

    def open_count(self) -> int:
        return sum(c.closed_by_server_at is None for c in list(self.connections))

    def closed_by_server(self) -> Counter:
        return Counter(c.kind for c in list(self.connections) if c.closed_by_server_at is not None)

    # -- the loop -------------------------------------------------------------------------------------------
    async def _open_all(self) -> None:
        for kind, n in self.counts.items():
            for _ in range(n):
                await self._start(kind, 0)

    async def _start(self, kind: str, generation: int) -> None:
        conn = SlowConnection(kind, generation)
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.failed_connects += 1
            return
        conn.opened_at = time.monotonic()
        self.connections.append(conn)
        self._writers.append(writer)
        task = self._loop.create_task(self._drive(conn, reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _request_head(self) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 "Content-Type: application/json", f"Content-Length: {self.body_length}",
                 *(f"{name}: {value}" for name, value in self.headers.items())]
        return ("\r\n".join(lines) + "\r\n").encode()

    async def _drive(self, conn: SlowConnection, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        watcher = self._loop.create_task(self._watch(conn, reader))
        try:
            if conn.kind == "body":
                writer.write(self._request_head() + b"\r\n")
                trickle = b"x" * (self.body_length - 1)
            elif conn.kind == "headers":
                trickle = self._request_head() + b"X-Slow: " + b"a" * 100_000
            else:
                trickle = b""
            for i in range(len(trickle)):
                if watcher.done():
                    break
                writer.write(trickle[i:i + 1])
                await writer.drain()
                await asyncio.sleep(self.interval)
            await watcher
        except (ConnectionError, OSError):
            self._mark_closed(conn)
        finally:
            watcher.cancel()
            writer.close()
        if not self._closing:
            await self._start(conn.kind, conn.generation + 1)

    async def _watch(self, conn: SlowConnection, reader: asyncio.StreamReader) -> None:
        """Keep what the server answers (e.g. a 408); EOF or a reset means the server closed the connection."""
        try:
            while data := await reader.read(65536):
                conn.answer = (conn.answer + data)[:200]
        except (ConnectionError, OSError):
            pass
        self._mark_closed(conn)

    @staticmethod
    def _mark_closed(conn: SlowConnection) -> None:
        if conn.closed_by_server_at is None:
            conn.closed_by_server_at = time.monotonic()

    async def _close_all(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
