"""The buffer worker every action runs on (EMQX emqx_resource_buffer_worker semantics, in asyncio).

``submit()`` queues one rendered request and returns at once, as EMQX's rule engine does: it casts the request to a
buffer worker and goes on (emqx_rule_runtime ``do_handle_action2`` → ``emqx_bridge_v2:send_message`` →
emqx_resource_buffer_worker ``async_query``/``pick_cast``), so the broker acknowledges a message without waiting
for its actions. The future ``submit()`` returns plays the part of EMQX's ``reply_to`` callback: it resolves when
the request succeeded (PostgreSQL committed / HTTP 2xx) or raises ``RuleDeliveryError`` when it was given up —
unrecoverable error (``failed``), older than ``request_ttl`` (``dropped.expired``), buffer overflow
(``dropped.queue_full``) or shutdown (``dropped.resource_stopped``). Only the rule metrics and tests look at it.

Lanes: one per buffer worker (``worker_pool_size``), each with its own queue of at most ``max_buffer_bytes`` —
EMQX opens one replayq of that size per worker (``replayq_opts``), and a full queue drops its oldest requests
(``append_queue``: ``dropped.queue_full``), so an action buffers up to ``worker_pool_size × max_buffer_bytes``. A
client always maps to the same lane, as EMQX picks a worker by ``pick_key`` (default: the calling process, which is
the client's connection process). For a synchronous connector (PostgreSQL: emqx_postgresql's ``callback_mode()`` is
``always_sync``, so an EMQX buffer worker runs one batch at a time and ``inflight_window`` does not apply) and with
``inflight_window = 1`` each lane runs one batch at a time — a client's requests are executed in order. Otherwise
a lane runs up to ``min(inflight_window, pool size)`` batches at once. A batch takes up to ``batch_size`` queued
requests, waiting at most ``batch_time`` for it to fill.

Results (emqx_resource_buffer_worker ``handle_query_result_pure``): an unrecoverable error fails every request of
the batch — acked, counted ``failed``, never retried; a recoverable one (connection lost, target down) is retried
with backoff, keeping its place, until its requests expire (``request_ttl``). The counters are EMQX's
(emqx_resource_metrics ``handle_counter_telemetry_event``): ``matched`` per request; ``success``/``failed`` per
outcome, where an outcome after at least one retry also counts ``retried`` and ``retried.success`` /
``retried.failed`` (``retried`` counts requests, not attempts); every ``dropped.*`` also counts ``dropped``.

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

# The counters of GET /api/v5/actions/{id}/metrics (emqx_bridge_v2_api format_metrics), plus the two EMQX keeps
# but that API leaves out (retried.success, retried.failed).
COUNTERS = ("matched", "received", "success", "failed", "dropped", "dropped.other", "dropped.expired",
            "dropped.queue_full", "dropped.resource_not_found", "dropped.resource_stopped", "retried",
            "retried.success", "retried.failed", "late_reply")


class RuleDeliveryError(RuntimeError):
    """An action gave up on a request. ``out_of_service``: the action had stopped (the rule counts
    ``actions.failed.out_of_service``); otherwise the rule counts ``actions.failed.unknown``."""

    def __init__(self, message: str, *, out_of_service: bool = False) -> None:
        super().__init__(message)
        self.out_of_service = out_of_service


class Recoverable(Exception):
    """Retry later: the target is unreachable or temporarily failing."""


class Unrecoverable(Exception):
    """Retrying cannot help (an error the database reported, bad parameter types, HTTP 4xx…)."""


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
        self.batches: dict[asyncio.Task[None], int] = {}      # delivering now → number of requests
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
            self.batches[task] = count
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self.batches.pop(task, None)
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
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.lanes: list[_Lane] = []
        self._stopping = False
        self.flushing = False           # stop() in progress: send partial batches at once

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

    def queued_bytes(self) -> int:
        return sum(lane.bytes for lane in self.lanes)

    def inflight(self) -> int:
        """Requests being executed now (EMQX's ``inflight`` gauge counts requests, not batches)."""
        return sum(sum(lane.batches.values()) for lane in self.lanes)

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
        """Queue one rule output and return at once; the future is the worker's reply (success or
        RuleDeliveryError), which nobody has to wait for."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.counters["matched"] += 1
        if self._stopping:
            future.set_exception(RuleDeliveryError(f"{self.id}: action stopped", out_of_service=True))
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
            item.future.set_exception(RuleDeliveryError(f"{self.id}: dropped ({reason})",
                                                        out_of_service=reason == "resource_stopped"))

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
                    return
            try:
                results = await self.execute(batch)
            except Recoverable as exc:
                if self._stopping and attempt > 0:
                    for item in batch:
                        self.drop(item, "resource_stopped")
                    return
                attempt += 1
                if attempt == 1:
                    log_event(log, "action.retrying", level=logging.WARNING, action=self.id, items=len(batch),
                              error=str(exc)[:200])
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            except Exception as exc:  # noqa: BLE001 - anything else fails the batch, never the worker
                results = [Unrecoverable(f"{type(exc).__name__}: {exc}")] * len(batch)
            self._count_results(batch, results, retried=attempt > 0)
            return

    def _count_results(self, batch: list[Item], results: list[BaseException | None], *, retried: bool) -> None:
        counters = self.counters
        if retried:
            log_event(log, "action.recovered", action=self.id, items=len(batch))
        failed = 0
        for item, result in zip(batch, results, strict=True):
            if result is None:
                counters["success"] += 1
                if retried:
                    counters["retried"] += 1
                    counters["retried.success"] += 1
                if not item.future.done():
                    item.future.set_result(None)
            else:
                failed += 1
                counters["failed"] += 1
                if retried:
                    counters["retried"] += 1
                    counters["retried.failed"] += 1
                if not item.future.done():
                    item.future.set_exception(RuleDeliveryError(f"{self.id}: {result}"))
        if failed:
            # EMQX logs unrecoverable_resource_error (throttled) and drops the requests: one line per batch here,
            # naming its clients, so an operator can see whose messages were lost.
            first = next(r for r in results if r is not None)
            log_event(log, "action.failed", level=logging.ERROR, action=self.id, failed=failed,
                      clientids=sorted({i.clientid for i, r in zip(batch, results, strict=True) if r is not None}),
                      error=str(first)[:300])

    def metrics(self) -> dict[str, Any]:
        """EMQX's action metrics: the counters and the ``queuing``, ``queuing_bytes`` and ``inflight`` gauges."""
        return {**self.counters, "queuing": self.queued(), "queuing_bytes": self.queued_bytes(),
                "inflight": self.inflight()}
