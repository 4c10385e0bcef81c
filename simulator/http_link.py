"""A simulated vehicle on the HTTP fallback (docs/PROTOCOL.md → HTTP fallback): the same ``Controller`` as over
MQTT, its messages POSTed to ``/api/v1/vehicle/{telemetry,status,mission}`` and its commands long-polled from
``/api/v1/vehicle/commands`` and acknowledged after handling.

Two threads: the poller only fetches commands (a long-poll blocks) and queues them; the runner owns the controller
(which is not thread-safe) — it ticks on time, handles queued commands in order, sends what they produce and then
acknowledges them. A 401 ``token_expired`` gets a new token and the request is repeated; any other refusal of the
credentials (revoked, decommissioned) stops the vehicle, as a refused CONNACK does over MQTT.

Run alone (``start``/``stop``), or as the fallback of an MQTT vehicle (``simulator.vehicle``): that one hands the
controller over, with its message counters and what it could not send, and gets it back once the runner has
finished — ``finish()`` (MQTT is back: let the poll under way end, handle what it brought, then stop) or ``close()``
(shutting down: end the poll under way, report the running mission failed, then stop). ``on_released`` says so,
from the runner's thread. Commands that arrive over MQTT meanwhile are handed to the runner with ``forward()``, so
the controller never has two threads.

Ending: each thread has its own ``AbortableSession`` (simulator.abortable), so a long-poll blocked for up to 25 s
ends the moment it is aborted, while the runner may still report over its own. ``abort()`` ends both at once, and
``join()`` waits a bounded time; a thread that outlives it (it cannot, short of a hung name lookup) logs nothing
more. Nothing of a vehicle may run, or log, after its owner has stopped it: ``stop()``, ``close(timeout)`` and the
fleet's stop (``simulator.fleet``) all end with a bounded join.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import Any

import requests

from fleetcore import envelope
from fleetcore.logs import log_event
from fleetcore.topics import Kind
from simulator.abortable import AbortableSession
from simulator.controller import Controller, Outgoing

log = logging.getLogger("simulator.http")
POLL_WAIT_S = 25          # each long-poll waits this long for a command (the api allows up to 30)
RETRY_S = 1.0             # after a network error or a 5xx, before trying again
SEEN_LIMIT = 1000         # msg_ids the poller remembers having queued
ABORT_WAIT_S = 2.0        # how long both threads may take to end once their requests are aborted (they take ms)


class CredentialsRefused(RuntimeError):
    """The api refused the vehicle's credentials: revoked, decommissioned or a wrong secret."""


class HttpVehicle:
    def __init__(self, api_url: str, vehicle_id: str, secret: str, controller: Controller, *,
                 timeout_s: float = 35.0, seq: dict[Kind, int] | None = None,
                 backlog: list[tuple[Kind, bytes]] | None = None, clock_skew_s: float = 0.0,
                 on_released: Callable[[], None] | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self.vehicle_id = vehicle_id
        self.secret = secret
        self.controller = controller
        self.timeout_s = timeout_s
        # (payload, msg_id to acknowledge over HTTP, or None for a command that came over MQTT); None wakes the runner
        self.commands: queue.Queue[tuple[bytes, str | None] | None] = queue.Queue()
        self.stopped = threading.Event()
        self.released = threading.Event()                 # the runner has ended: the controller is free
        self.error: BaseException | None = None
        self.sent: dict[Kind, int] = defaultdict(int)    # messages the api answered 202, per kind
        # seq goes on from the MQTT vehicle's, so the backend's (ts, seq) order holds across the switch
        self.seq: dict[Kind, int] = defaultdict(int, seq or {})
        self._backlog = list(backlog or [])               # already-built messages MQTT could not send, in order
        self._clock_skew_ms = int(clock_skew_s * 1000)
        self._on_released = on_released
        self._finishing = threading.Event()               # MQTT is back: stop polling after the poll under way
        self._closing = threading.Event()                 # shutting down: end the mission, then stop
        self._poll_done = threading.Event()
        self._token: str | None = None
        self._token_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._poll_session = AbortableSession()           # one per thread: close() ends the poll, not the report
        self._run_session = AbortableSession()
        self._silent = threading.Event()                  # a join gave up: whatever still runs says nothing more
        self.polls = 0                                    # long-polls started (tests wait for one to be under way)

    # -- requests --------------------------------------------------------------------------------------------
    def _log(self, event: str, level: int, **fields: Any) -> None:
        if not self._silent.is_set():
            log_event(log, event, level, vehicle=self.vehicle_id, **fields)

    def _new_token(self, session: requests.Session) -> str:
        response = session.post(f"{self.api_url}/api/v1/vehicle/token",
                                json={"vehicle_id": self.vehicle_id, "secret": self.secret}, timeout=self.timeout_s)
        if response.status_code in (401, 429):
            raise CredentialsRefused(f"token refused: {response.status_code} {response.text[:200]}")
        response.raise_for_status()
        return response.json()["access_token"]

    def _request(self, session: AbortableSession, method: str, path: str, *, body: bytes | None = None,
                 params: dict[str, Any] | None = None) -> requests.Response:
        """One request with the vehicle token; a new token when it expired; network errors and 5xx retried."""
        while not self.stopped.is_set() and not session.aborted:
            try:
                with self._token_lock:
                    if self._token is None:
                        self._token = self._new_token(session)
                    token = self._token
                headers = {"Authorization": f"Bearer {token}"}
                if body is not None:
                    headers["Content-Type"] = "application/json"
                response = session.request(method, f"{self.api_url}/api/v1/vehicle/{path}", timeout=self.timeout_s,
                                           headers=headers, data=body, params=params)
            except requests.RequestException as exc:
                if session.aborted:
                    break                     # we ended it (stopping): nothing failed
                self._log("http.request_failed", logging.WARNING, path=path, error=exc.__class__.__name__)
                if self._closing.is_set():
                    raise InterruptedError("shutting down with the api unreachable") from None
                self.stopped.wait(RETRY_S)
                continue
            if response.status_code == 401:
                if response.json().get("code") != "token_expired":
                    raise CredentialsRefused(f"{path}: {response.text[:200]}")
                with self._token_lock:
                    if self._token == token:
                        self._token = None
                continue
            if response.status_code >= 500:
                self.stopped.wait(RETRY_S)
                continue
            return response
        raise InterruptedError("stopped")

    def send(self, out: Outgoing) -> None:
        """POST one message as it would be published (same envelope, same msg_id on a retry)."""
        self.seq[out.kind] += 1
        message = envelope.message(out.data, seq=self.seq[out.kind], ts=envelope.now_ms() + self._clock_skew_ms)
        self._post(out.kind, envelope.encode(message))

    def _post(self, kind: Kind, payload: bytes) -> None:
        response = self._request(self._run_session, "POST", kind.value, body=payload)
        if response.status_code == 202:
            self.sent[kind] += 1
            for dead in response.json()["rejected"]:
                self._log("http.dead_lettered", logging.WARNING, kind=kind.value, reason=dead["reason"],
                          detail=dead["detail"])
        else:
            self._log("http.refused", logging.WARNING, kind=kind.value, status=response.status_code)

    # -- threads ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        for target in (self._poll, self._run):
            thread = threading.Thread(target=self._guarded, args=(target,), name=f"http-{self.vehicle_id}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = ABORT_WAIT_S) -> bool:
        """Stop at once and wait up to ``timeout`` for both threads (the stand-alone vehicle); True if they ended."""
        self.abort()
        return self.join(timeout)

    def finish(self) -> None:
        """MQTT is back: no new poll; the runner handles what the last one brings, then releases the controller."""
        self._finishing.set()
        self.commands.put(None)

    def close(self, timeout: float | None = None) -> bool:
        """Shutting down: the poll under way ends now; the runner reports the running mission failed, then stops.

        Without ``timeout`` this returns at once (the MQTT vehicle calls it on an I/O thread it shares with other
        vehicles; the fleet aborts and joins every link afterwards, all within one bounded wait). With it, the
        runner has ``timeout`` seconds for its report, then both threads are aborted and joined (``ABORT_WAIT_S``
        more at most); True if they ended."""
        self._closing.set()
        self.commands.put(None)
        self._poll_session.abort()
        if timeout is None:
            return not self.alive
        if self._threads:                     # never started: no runner to report
            self.released.wait(timeout)
        return self.stop()

    def abort(self) -> None:
        """End both threads now without waiting: no new request, and the ones under way fail at once (thread-safe).
        The runner does not report the mission failed: use ``close()`` for that."""
        self.stopped.set()
        self.commands.put(None)
        self._poll_session.abort()
        self._run_session.abort()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for both threads; True if they have ended. If not, they log nothing more."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.alive:
            self._silent.set()
            return False
        return True

    @property
    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def forward(self, payload: bytes) -> None:
        """A command that arrived over MQTT while the runner still owns the controller (thread-safe)."""
        self.commands.put((payload, None))

    def _guarded(self, target) -> None:
        try:
            target()
        except InterruptedError:
            pass
        except BaseException as exc:  # noqa: BLE001 - the vehicle stops and says why
            if self.stopped.is_set() or (target == self._poll and self._poll_session.aborted):
                return                        # an aborted request may surface as any error: we were stopping
            self.error = exc
            self._log("http.vehicle_stopped", logging.ERROR, error=str(exc))
            self.stopped.set()
            self.commands.put(None)

    def _poll(self) -> None:
        # A command stays pending until the runner has handled and acknowledged it, so the next poll may hand it out
        # again: queue each once (the controller ignores a repeated msg_id anyway, as over MQTT).
        queued: OrderedDict[str, None] = OrderedDict()
        try:
            while not self.stopped.is_set() and not self._finishing.is_set() and not self._closing.is_set():
                self.polls += 1
                response = self._request(self._poll_session, "GET", "commands", params={"wait": POLL_WAIT_S})
                fresh = [c for c in response.json()["commands"] if c["msg_id"] not in queued]
                for command in fresh:
                    queued[command["msg_id"]] = None
                    self.commands.put((envelope.encode(command), command["msg_id"]))
                while len(queued) > SEEN_LIMIT:
                    queued.popitem(last=False)
                if response.json()["commands"] and not fresh:
                    self.stopped.wait(RETRY_S / 10)   # all handed out before and not yet acknowledged: do not spin
        finally:
            self._poll_session.close()
            self._poll_done.set()
            self.commands.put(None)

    def _run(self) -> None:
        try:
            self._drive()
        finally:
            self._run_session.close()
            if self._closing.is_set():
                self.stopped.set()            # the poller need not poll again
            self.released.set()
            if self._on_released is not None:
                self._on_released()

    def _drive(self) -> None:
        now = time.monotonic()
        last_tick, next_tick = now, now + self.controller.telemetry_interval_s
        self.send(self.controller.status_now(now))
        for kind, payload in self._backlog:
            self._post(kind, payload)
        self._backlog.clear()
        while not self.stopped.is_set():
            if self._closing.is_set():
                for out in self.controller.shutdown():
                    self.send(out)
                return
            if self._poll_done.is_set() and self._finishing.is_set() and self.commands.empty():
                return
            now = time.monotonic()
            if now >= next_tick:
                for out in self.controller.tick(now - last_tick, now):
                    self.send(out)
                last_tick, next_tick = now, now + self.controller.telemetry_interval_s
                continue
            try:
                item = self.commands.get(timeout=next_tick - now)
            except queue.Empty:
                continue
            if item is None:
                continue
            payload, ack = item
            for out in self.controller.handle_command(payload, time.monotonic()):
                self.send(out)
            if ack is not None:
                self._request(self._run_session, "POST", f"commands/{ack}/ack")
