"""The buffer worker every action runs on (EMQX emqx_resource_buffer_worker semantics, in asyncio).

``submit()`` queues one rendered request and returns a future that resolves when the request succeeded
(PostgreSQL committed / HTTP 2xx) or raises ``RuleDeliveryError`` when it was given up: unrecoverable error,
older than ``request_ttl`` (dropped.expired), buffer overflow (dropped.queue_full) or shutdown.

Lanes: one per buffer worker (``worker_pool_size``), each with its own queue of at most ``max_buffer_bytes`` —
EMQX opens one replayq of that size per worker, so an action buffers up to ``worker_pool_size ×
max_buffer_bytes``. A client always maps to the same lane, as EMQX does with its pick key. For a synchronous
connector (PostgreSQL: emqx_postgresql's ``callback_mode()`` is ``always_sync``, so an EMQX buffer worker runs one
batch at a time and ``inflight_window`` does not apply) and with ``inflight_window = 1`` each lane runs one batch
at a time — a client's requests are executed in order. Otherwise a lane runs up to ``min(inflight_window, pool
size)`` batches at once. A batch takes up to ``batch_size`` queued requests, waiting at most ``batch_time`` for it
to fill. A batch that fails for a recoverable reason (connection lost, server down…) is retried with backoff,
keeping its place, until its requests expire.

Every task is kept: a lane's worker task, and the task of each batch it runs (``_Lane.batches``). ``stop()``
waits for them (bounded), then cancels the batches still running and fails their requests as EMQX does when a
resource stops (dropped.resource_stopped).
"""
from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from typing import Any

from fleetcore.logs import log_event

from ...config import ActionConfig

log = logging.getLogger("emqx.standin.rules.actions")

BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0


class RuleDeliveryError(RuntimeError):
    """An action gave up on a message (the broker must not acknowledge it as stored)."""


class Recoverable(Exception):
    """Retry later: the target is unreachable or temporarily failing."""


class Unrecoverable(Exception):
    """Retrying cannot help (bad parameter types, 4xx…)."""


class Item:
    __slots__ = ("payload", "future", "t0", "size", "clientid")

    def __init__(self, payload: Any, future: asyncio.Future, t0: float, size: int, clientid: str) -> None:
        self.payload, self.future, self.t0, self.size, self.clientid = payload, future, t0, size, clientid


class _Lane:
    def __init__(self, action: BufferedAction, max_inflight: int) -> None:
        self.action = action
        self.max_inflight = max_inflight
        self.queue: deque[Item] = deque()
        self.bytes = 0
        self.batches: set[asyncio.Task[None]] = set()      # delivering now
        self.wakeup = asyncio.Event()
        self.filled = asyncio.Event()
        self.slot_free = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def inflight(self) -> int:
        return len(self.batches)

    def put(self, item: Item) -> None:
        action = self.action
        limit = action.opts.max_buffer_bytes
        while self.queue and self.bytes + item.size > limit:
            old = self.queue.popleft()
            self.bytes -= old.size
            action.drop(old, "queue_full")
        self.queue.append(item)
        self.bytes += item.size
        if not self.wakeup.is_set():
            self.wakeup.set()
        if len(self.queue) >= action.opts.batch_size and not self.filled.is_set():
            self.filled.set()

    async def run(self) -> None:
        action = self.action
        opts = action.opts
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            while self.inflight >= self.max_inflight:
                self.slot_free.clear()
                await self.slot_free.wait()
            if opts.batch_size > 1 and opts.batch_time_s > 0 and len(self.queue) < opts.batch_size \
                    and not action.flushing:
                self.filled.clear()
                try:
                    await asyncio.wait_for(self.filled.wait(), opts.batch_time_s)
                except TimeoutError:
                    pass
            count = min(opts.batch_size, len(self.queue))
            if count == 0:
                continue
            batch = [self.queue.popleft() for _ in range(count)]
            for item in batch:
                self.bytes -= item.size
            task = loop.create_task(action.deliver(batch))
            self.batches.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self.batches.discard(task)
        self.slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("action.batch_crashed", exc_info=task.exception())


class BufferedAction:
    """Base class: subclasses implement ``render()`` and ``execute()``."""

    type = ""

    def __init__(self, config: ActionConfig, pool_size: int) -> None:
        self.config = config
        self.id = config.id
        self.opts = config.resource_opts
        self.pool_size = pool_size
        self.counters = {"matched": 0, "success": 0, "failed": 0, "dropped": 0, "dropped.expired": 0,
                         "dropped.queue_full": 0, "dropped.resource_stopped": 0, "retried": 0,
                         "retried.success": 0, "retried.failed": 0}
        self.lanes: list[_Lane] = []
        self._stopping = False
        self.flushing = False           # stop() in progress: send partial batches at once
        self._retrying = 0

    # -- to implement ------------------------------------------------------------------------------------
    def render(self, output: dict[str, Any]) -> tuple[Any, int]:
        """(payload to execute, approximate size in bytes) for one rule output."""
        raise NotImplementedError

    async def execute(self, batch: list[Item]) -> list[BaseException | None]:
        """Run one batch; return one result per item (None = success, an Unrecoverable = failed item).
        Raise Recoverable to retry the whole batch later."""
        raise NotImplementedError

    @property
    def status(self) -> str:
        return "connected"

    # A synchronous connector runs one batch per buffer worker at a time. Since a client always maps to the same
    # worker, two batches in flight never carry the same client — the ingest SQL relies on that: it updates each
    # vehicle's latest-state row, and batches sharing vehicles in different orders could deadlock.
    always_sync = False

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        in_order = self.opts.inflight_window == 1 or self.always_sync
        max_inflight = 1 if in_order else max(1, min(self.opts.inflight_window, self.pool_size))
        self.lanes = [_Lane(self, max_inflight) for _ in range(self.opts.worker_pool_size)]
        loop = asyncio.get_running_loop()
        for lane in self.lanes:
            lane.task = loop.create_task(lane.run(), name=f"action:{self.id}")

    def queued(self) -> int:
        return sum(len(lane.queue) for lane in self.lanes)

    def inflight(self) -> int:
        return sum(lane.inflight for lane in self.lanes)

    async def stop(self, timeout: float = 10.0) -> None:
        """Let queued and in-flight requests finish (at most ``timeout`` s), then fail what is left."""
        deadline = time.monotonic() + timeout
        self.flushing = True
        for lane in self.lanes:
            lane.filled.set()
        while (self.queued() or self.inflight()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._stopping = True
        for lane in self.lanes:
            if lane.task:
                lane.task.cancel()
            while lane.queue:
                self.drop(lane.queue.popleft(), "resource_stopped")
        while self.inflight() and time.monotonic() < deadline + 1.0:
            await asyncio.sleep(0.02)
        late = [task for lane in self.lanes for task in lane.batches]
        for task in late:
            task.cancel()                   # deliver() fails its requests
        if late:
            await asyncio.wait(late)
        for lane in self.lanes:
            if lane.task:
                try:
                    await lane.task
                except asyncio.CancelledError:
                    pass

    # -- submission --------------------------------------------------------------------------------------
    def submit(self, output: dict[str, Any], clientid: str) -> asyncio.Future:
        """Queue one rule output; the future resolves when it is delivered (or raises RuleDeliveryError)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.counters["matched"] += 1
        if self._stopping:
            future.set_exception(RuleDeliveryError(f"{self.id}: action stopped"))
            self.counters["dropped"] += 1
            self.counters["dropped.resource_stopped"] += 1
            return future
        try:
            payload, size = self.render(output)
        except Unrecoverable as exc:
            self.counters["failed"] += 1
            future.set_exception(RuleDeliveryError(f"{self.id}: {exc}"))
            return future
        item = Item(payload, future, loop.time(), size, clientid)
        lanes = self.lanes
        lane = lanes[0] if len(lanes) == 1 else lanes[zlib.crc32(clientid.encode()) % len(lanes)]
        lane.put(item)
        return future

    def drop(self, item: Item, reason: str) -> None:
        self.counters["dropped"] += 1
        self.counters[f"dropped.{reason}"] = self.counters.get(f"dropped.{reason}", 0) + 1
        log_event(log, "buffer_worker_dropped", level=logging.WARNING, action=self.id, clientid=item.clientid,
                  reason=reason)
        if not item.future.done():
            item.future.set_exception(RuleDeliveryError(f"{self.id}: dropped ({reason})"))

    # -- delivery with retry -----------------------------------------------------------------------------
    async def deliver(self, batch: list[Item]) -> None:
        try:
            await self._deliver(batch)
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    self.drop(item, "resource_stopped")
            raise

    async def _deliver(self, batch: list[Item]) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_INITIAL_S
        attempt = 0
        ttl = self.opts.request_ttl_s
        while batch:
            oldest = loop.time() - ttl
            if any(item.t0 < oldest for item in batch):
                live = []
                for item in batch:
                    if item.t0 < oldest:
                        self.drop(item, "expired")
                    else:
                        live.append(item)
                batch = live
                if not batch:
                    if attempt:
                        self._retrying -= 1
                        self.counters["retried.failed"] += 1
                    return
            try:
                results = await self.execute(batch)
            except Recoverable as exc:
                if self._stopping and attempt > 0:
                    for item in batch:
                        self.drop(item, "resource_stopped")
                    return
                attempt += 1
                self.counters["retried"] += 1
                if attempt == 1:
                    self._retrying += 1
                    log_event(log, "action.retrying", level=logging.WARNING, action=self.id, items=len(batch),
                              error=str(exc)[:200])
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            except Exception as exc:  # noqa: BLE001 - anything else fails the batch, never the worker
                results = [Unrecoverable(f"{type(exc).__name__}: {exc}")] * len(batch)
            if attempt:
                self._retrying -= 1
                self.counters["retried.success"] += 1
                log_event(log, "action.recovered", action=self.id, items=len(batch), attempts=attempt + 1)
            for item, result in zip(batch, results, strict=True):
                if result is None:
                    self.counters["success"] += 1
                    if not item.future.done():
                        item.future.set_result(None)
                else:
                    self.counters["failed"] += 1
                    log_event(log, "action.failed", level=logging.ERROR, action=self.id, clientid=item.clientid,
                              error=str(result)[:300])
                    if not item.future.done():
                        item.future.set_exception(RuleDeliveryError(f"{self.id}: {result}"))
            return

    def metrics(self) -> dict[str, Any]:
        return {**self.counters, "queuing": self.queued(), "inflight": self.inflight(), "status": self.status}
