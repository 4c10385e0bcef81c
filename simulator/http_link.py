"""A simulated vehicle on the HTTP fallback (docs/PROTOCOL.md → HTTP fallback): the same ``Controller`` as over
MQTT, its messages POSTed to ``/api/v1/vehicle/{telemetry,status,mission}`` and its commands long-polled from
``/api/v1/vehicle/commands`` and acknowledged after handling.

Two threads: the poller only fetches commands (a long-poll blocks) and queues them; the runner owns the controller
(which is not thread-safe) — it ticks on time, handles queued commands in order, sends what they produce and then
acknowledges them. A 401 ``token_expired`` gets a new token and the request is repeated; any other refusal of the
credentials (revoked, decommissioned) stops the vehicle, as a refused CONNACK does over MQTT.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict, defaultdict
from typing import Any

import requests

from fleetcore import envelope
from fleetcore.logs import log_event
from fleetcore.topics import Kind
from simulator.controller import Controller, Outgoing

log = logging.getLogger("simulator.http")
POLL_WAIT_S = 25          # each long-poll waits this long for a command (the api allows up to 30)
RETRY_S = 1.0             # after a network error or a 5xx, before trying again
SEEN_LIMIT = 1000         # msg_ids the poller remembers having queued


class CredentialsRefused(RuntimeError):
    """The api refused the vehicle's credentials: revoked, decommissioned or a wrong secret."""


class HttpVehicle:
    def __init__(self, api_url: str, vehicle_id: str, secret: str, controller: Controller, *,
                 timeout_s: float = 35.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.vehicle_id = vehicle_id
        self.secret = secret
        self.controller = controller
        self.timeout_s = timeout_s
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self.sent: dict[Kind, int] = defaultdict(int)    # messages the api answered 202, per kind
        self._seq: dict[Kind, int] = defaultdict(int)
        self._token: str | None = None
        self._token_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- requests --------------------------------------------------------------------------------------------
    def _new_token(self) -> str:
        response = requests.post(f"{self.api_url}/api/v1/vehicle/token",
                                 json={"vehicle_id": self.vehicle_id, "secret": self.secret}, timeout=self.timeout_s)
        if response.status_code in (401, 429):
            raise CredentialsRefused(f"token refused: {response.status_code} {response.text[:200]}")
        response.raise_for_status()
        return response.json()["access_token"]

    def _request(self, method: str, path: str, *, body: bytes | None = None,
                 params: dict[str, Any] | None = None) -> requests.Response:
        """One request with the vehicle token; a new token when it expired; network errors and 5xx retried."""
        while not self.stopped.is_set():
            with self._token_lock:
                if self._token is None:
                    self._token = self._new_token()
                token = self._token
            headers = {"Authorization": f"Bearer {token}"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            try:
                response = requests.request(method, f"{self.api_url}/api/v1/vehicle/{path}", timeout=self.timeout_s,
                                            headers=headers, data=body, params=params)
            except requests.RequestException as exc:
                log_event(log, "http.request_failed", logging.WARNING, vehicle=self.vehicle_id, path=path,
                          error=exc.__class__.__name__)
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
        self._seq[out.kind] += 1
        message = envelope.message(out.data, seq=self._seq[out.kind])
        response = self._request("POST", out.kind.value, body=envelope.encode(message))
        if response.status_code == 202:
            self.sent[out.kind] += 1
            for dead in response.json()["rejected"]:
                log_event(log, "http.dead_lettered", logging.WARNING, vehicle=self.vehicle_id, kind=out.kind.value,
                          reason=dead["reason"], detail=dead["detail"])
        else:
            log_event(log, "http.refused", logging.WARNING, vehicle=self.vehicle_id, kind=out.kind.value,
                      status=response.status_code)

    # -- threads ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        for target in (self._poll, self._run):
            thread = threading.Thread(target=self._guarded, args=(target,), name=f"http-{self.vehicle_id}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.stopped.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)

    def _guarded(self, target) -> None:
        try:
            target()
        except InterruptedError:
            pass
        except BaseException as exc:  # noqa: BLE001 - the vehicle stops and says why
            self.error = exc
            log_event(log, "http.vehicle_stopped", logging.ERROR, vehicle=self.vehicle_id, error=str(exc))
            self.stopped.set()

    def _poll(self) -> None:
        # A command stays pending until the runner has handled and acknowledged it, so the next poll may hand it out
        # again: queue each once (the controller ignores a repeated msg_id anyway, as over MQTT).
        queued: OrderedDict[str, None] = OrderedDict()
        while not self.stopped.is_set():
            response = self._request("GET", "commands", params={"wait": POLL_WAIT_S})
            fresh = [c for c in response.json()["commands"] if c["msg_id"] not in queued]
            for command in fresh:
                queued[command["msg_id"]] = None
                self.commands.put(command)
            while len(queued) > SEEN_LIMIT:
                queued.popitem(last=False)
            if response.json()["commands"] and not fresh:
                self.stopped.wait(RETRY_S / 10)   # all handed out before and not yet acknowledged: do not spin

    def _run(self) -> None:
        now = time.monotonic()
        last_tick, next_tick = now, now
        self.send(self.controller.status_now(now))
        while not self.stopped.is_set():
            try:
                command = self.commands.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                now = time.monotonic()
                for out in self.controller.tick(now - last_tick, now):
                    self.send(out)
                last_tick, next_tick = now, now + self.controller.telemetry_interval_s
                continue
            for out in self.controller.handle_command(envelope.encode(command), time.monotonic()):
                self.send(out)
            self._request("POST", f"commands/{command['msg_id']}/ack")
