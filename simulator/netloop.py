"""Many MQTT clients on few threads: each ``IoWorker`` owns a slice of the vehicles and drives their paho clients
with one selector and one timer heap.

paho-mqtt's ``loop_start()`` would start a network thread per client (1,000 vehicles → 1,000 threads). Instead
each client is attached to a worker through paho's external-loop hooks (``on_socket_open`` / ``close`` /
``register_write`` / ``unregister_write``); the worker calls ``loop_read`` / ``loop_write`` when the selector says
so and ``loop_misc`` (keepalive) once a second. Everything a vehicle does — ticks, publishes, reconnects — runs on
its worker's thread, so no vehicle is ever touched by two threads and paho needs no locking from us.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from fleetcore.logs import log_event

log = logging.getLogger("simulator.netloop")
MISC_INTERVAL_S = 1.0


class Timer:
    """A scheduled call; ``cancel()`` makes it a no-op."""
    __slots__ = ("due", "callback", "cancelled")

    def __init__(self, due: float, callback: Callable[[], None]) -> None:
        self.due = due
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class IoWorker(threading.Thread):
    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.clients: set[mqtt.Client] = set()
        self.stopping = threading.Event()
        self.errors = 0

    # -- scheduling (call from the worker thread, except call_soon_threadsafe) --------------------------------
    def call_at(self, due: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(due, callback)
        heapq.heappush(self._timers, (due, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(time.monotonic() + max(0.0, delay), callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self._calls.put(callback)
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already woken (buffer full) or shutting down

    # -- paho external-loop hooks ---------------------------------------------------------------------------
    def attach(self, client: mqtt.Client) -> None:
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        self.clients.add(client)

    def detach(self, client: mqtt.Client) -> None:
        self.clients.discard(client)

    def _socket_open(self, client, userdata, sock) -> None:
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _socket_close(self, client, userdata, sock) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _register_write(self, client, userdata, sock) -> None:
        try:
            self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
        except (KeyError, ValueError):
            pass

    def _unregister_write(self, client, userdata, sock) -> None:
        try:
            self.selector.modify(sock, selectors.EVENT_READ, client)
        except (KeyError, ValueError):
            pass

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self) -> None:
        next_misc = time.monotonic() + MISC_INTERVAL_S
        while not self.stopping.is_set():
            now = time.monotonic()
            timeout = min(next_misc, self._timers[0][0] if self._timers else next_misc) - now
            for key, events in self.selector.select(max(0.0, min(timeout, MISC_INTERVAL_S))):
                if key.data is None:
                    self._drain_wakeups()
                    continue
                self._service(key.data, key.fileobj, events)
            self._run_calls()
            self._run_due_timers()
            now = time.monotonic()
            if now >= next_misc:
                for client in list(self.clients):
                    self._guard(client.loop_misc)
                next_misc = now + MISC_INTERVAL_S
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _service(self, client: mqtt.Client, sock, events: int) -> None:
        if events & selectors.EVENT_READ:
            self._guard(client.loop_read)
            # TLS may hold decrypted bytes the selector cannot see.
            while isinstance(sock, ssl.SSLSocket) and client.socket() is sock and sock.pending():
                self._guard(client.loop_read)
        if events & selectors.EVENT_WRITE and client.socket() is not None:
            self._guard(client.loop_write)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _run_calls(self) -> None:
        while True:
            try:
                callback = self._calls.get_nowait()
            except queue.Empty:
                return
            self._guard(callback)

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._guard(timer.callback)

    def _guard(self, callback: Callable[[], object]) -> None:
        # One vehicle's bug must not stop the other vehicles of this worker.
        try:
            callback()
        except Exception:
            self.errors += 1
            log.exception("callback failed", extra={"event": "netloop.callback_failed"})

    def stop(self) -> None:
        self.stopping.set()
        self.call_soon_threadsafe(lambda: None)


def start_workers(count: int) -> list[IoWorker]:
    workers = [IoWorker(f"mqtt-io-{i}") for i in range(count)]
    for worker in workers:
        worker.start()
    log_event(log, "netloop.started", workers=count)
    return workers


class Gate:
    """A thread-safe cap on how many vehicles may be in a costly phase at once (CONNECT → CONNACK, registration),
    so a thousand vehicles starting together queue politely instead of timing out the backend's authn."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.in_use >= self.capacity:
                return False
            self.in_use += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.in_use = max(0, self.in_use - 1)
