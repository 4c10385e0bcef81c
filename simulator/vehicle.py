"""One simulated vehicle's MQTT protocol (docs/PROTOCOL.md) — the reference client for vehicle makers.

Life of a vehicle:

1. **Register** (only without a device secret): connect with ``clientid = _enroll-<vehicle id>``,
   ``username = <vehicle id>`` and the one-time enrollment token as password (role ``enrolling``; a session of its
   own, never the vehicle's), SUBSCRIBE ``fleet/v1/{vid}/register/response``
   first, then PUBLISH the request to ``fleet/v1/{vid}/register/request`` (QoS 1). ``register.accepted`` carries
   the device secret: it is written to the local state file at once (shown only once), then the vehicle
   disconnects.
2. **Connect** with the device secret, a persistent session (commands sent while briefly offline are kept) and a
   Last Will: retained QoS 1 ``CONNECTIONBROKEN`` on ``fleet/v1/{vid}/connection``. Once connected: subscribe
   to its own ``cmd`` and ``fleet/v1/_fleet/cmd``, publish retained ``ONLINE``, publish status, send what was
   queued while offline (telemetry as ``{"v":1,"batch":[…]}`` uploads of bounded size).
3. **Run**: telemetry on every tick (1 Hz with jitter), status on change and periodically, mission events as
   the controller decides; commands go to ``simulator.controller``.
4. **Lose the connection**: keep ticking and buffering; reconnect with jittered exponential backoff.
   **Cannot reach the broker at all** (``--transport auto``, the default): after ``fallback_after`` (3) failed
   connection attempts in a row — refused, timed out, a failed TLS handshake, no CONNACK within 10 s — the first of
   them at least ``fallback_min_span_s`` (60 s) before, switch to the HTTP fallback (``simulator.http_link``: the
   controller, the message counters and what could not be sent are handed over to its threads) and try MQTT again
   every ``probe_every_s`` (5 min, jittered). A CONNACK that accepts: subscribe, publish ``ONLINE``, and once the
   subscription is granted let HTTP finish its poll under way and take the controller back. A CONNACK that refuses
   is no reason to fall back (HTTP refuses the same credentials). ``--transport http``: HTTP only (a site that
   blocks MQTT); ``--transport mqtt``: never fall back.
5. **Shut down cleanly**: report the running mission ``failed`` (reason ``vehicle shut down``), publish retained
   ``OFFLINE`` (QoS 1, wait for its PUBACK, which comes after the mission event's), then DISCONNECT (no Will).

All of a vehicle's work runs on the thread of its ``IoWorker`` (see ``simulator.netloop``).
"""
from __future__ import annotations

import json
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleetcore import envelope, topics
from fleetcore.logs import log_event
from fleetcore.topics import Kind
from simulator import certificate
from simulator.api_client import VehicleRevoked
from simulator.backoff import Backoff
from simulator.controller import Controller, Outgoing
from simulator.credentials_store import CredentialsStore
from simulator.faults import MALFORMED_KINDS, FaultConfig, malformed_payload
from simulator.http_link import HttpVehicle
from simulator.netloop import Gate, IoWorker, Timer
from simulator.outbox import OfflineBuffer

log = logging.getLogger("simulator.vehicle")

KEEPALIVE_S = 30
REGISTRATION_TIMEOUT_S = 30.0
SHUTDOWN_PUBACK_TIMEOUT_S = 3.0
PENDING_LIMIT = 500          # mission events kept while offline
# Consecutive "not authorized" CONNACKs before asking the api for a new enrollment token. High on purpose: an
# overloaded or unreachable authsvc also answers "not authorized" (EMQX fails closed), and re-enrolling a whole
# fleet because the backend is slow would make things worse. With the backoff this is a few minutes.
RENEW_AFTER_REFUSALS = 8
GATE_RETRY_S = (0.05, 0.3)   # wait before asking a full gate again
TICK_JITTER = 0.05           # ± fraction of the interval
STABLE_AFTER_S = 10.0        # a connection that lasted this long resets the reconnect backoff
# Connections in a row the broker closed before they were stable: then say that another client may use this id
# (two clients with one id take the session from each other in turn; simulator/claims.py).
SHORT_LINKS_HINT = 3
PROBE_JITTER = 0.2           # ± fraction of probe_every_s, so a fleet behind one firewall does not probe at once


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    ca_file: str | None = None

    @classmethod
    def parse(cls, url: str, ca_file: str | None = None) -> BrokerAddress:
        """``mqtt://host:port`` (default port 1883) or ``mqtts://host:port`` (default 8883, TLS)."""
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
        tls = parsed.scheme in ("mqtts", "ssl")
        if not parsed.hostname:
            raise ValueError(f"broker URL has no host: {url!r}")
        return cls(parsed.hostname, parsed.port or (8883 if tls else 1883), tls, ca_file)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class Transport(StrEnum):
    """``--transport``: how a vehicle reaches the backend (docs/PROTOCOL.md → HTTP fallback)."""
    AUTO = "auto"                # MQTT; the HTTP fallback while the broker cannot be reached
    MQTT = "mqtt"                # MQTT only
    HTTP = "http"                # HTTP only, after registering over MQTT (a site that blocks MQTT)


class State(StrEnum):
    NEW = "new"
    REGISTERING = "registering"
    CONNECTING = "connecting"
    ONLINE = "online"
    HTTP = "http"                # on the HTTP fallback (MQTT probed now and then)
    WAITING = "waiting"          # backing off before the next connection attempt
    FAILED = "failed"            # gave up (no credentials, registration rejected)
    STOPPED = "stopped"


@dataclass
class Counters:
    """Per-worker counters (each worker's vehicles share one; the display sums them)."""
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("telemetry", "status", "mission", "connection", "register/request", "batch"), 0))
    registered: int = 0
    register_rejected: int = 0
    connects: int = 0
    disconnects: int = 0
    refused: int = 0
    publish_errors: int = 0
    subscribe_denied: int = 0
    fallbacks: int = 0           # switches to the HTTP fallback
    faults: dict[str, int] = field(default_factory=dict)

    def fault(self, name: str) -> None:
        self.faults[name] = self.faults.get(name, 0) + 1


@dataclass
class VehicleOptions:
    broker: BrokerAddress
    telemetry_qos: int = 1
    buffer_capacity: int = 3600
    batch_max_items: int = 100
    batch_max_bytes: int = 64_000
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    model: str = "fleet-sim"
    # certificate identity (docs/PROTOCOL.md): register with a CSR, then connect here with the certificate
    mtls_broker: BrokerAddress | None = None
    # HTTP fallback (docs/PROTOCOL.md): without an api URL, "auto" never falls back
    transport: Transport = Transport.AUTO
    api_url: str | None = None
    fallback_after: int = 3            # failed connection attempts in a row ...
    fallback_min_span_s: float = 60.0  # ... the first at least this long before the last
    probe_every_s: float = 300.0       # on HTTP: try MQTT again this often (± PROBE_JITTER)
    connack_timeout_s: float = 10.0    # a CONNECT without an answer this long is a failed attempt (PROTOCOL.md)


class SimVehicle:
    def __init__(self, vehicle_id: str, *, worker: IoWorker, store: CredentialsStore, controller: Controller,
                 options: VehicleOptions, counters: Counters, rng: random.Random,
                 faults: FaultConfig | None = None, neighbours: list[str] | None = None,
                 renew_token: Callable[[str], str | None] | None = None, gate: Gate | None = None) -> None:
        self.vehicle_id = vehicle_id
        self.worker = worker
        self.store = store
        self.controller = controller
        self.options = options
        self.counters = counters
        self.rng = rng
        self.faults = faults or FaultConfig()
        self.neighbours = [n for n in (neighbours or []) if n != vehicle_id] or ["not-" + vehicle_id[:60]]
        self.renew_token = renew_token
        self.gate = gate
        self._in_gate = False
        self.state = State.NEW
        self.last_error: str | None = None
        self.client: mqtt.Client | None = None
        self.buffer = OfflineBuffer(options.buffer_capacity)
        self.backoff = Backoff(options.backoff_base_s, options.backoff_cap_s, rng)
        self._pending: deque[tuple[Kind, dict[str, Any]]] = deque(maxlen=PENDING_LIMIT)
        self._seq: dict[Kind, int] = {}
        self._timers: list[Timer] = []
        self._tick_timer: Timer | None = None
        self._next_tick = 0.0
        self._last_tick = 0.0
        self._register_request_id: str | None = None
        self._register_token: str | None = None
        self._refusals = 0
        self._stopping = False
        self._offline_mid: int | None = None
        self._held: tuple[str, bytes] | None = None   # out-of-order fault: a telemetry message held back
        self._malformed_turn = 0
        self._connection_seq = 0
        self._online_since: float | None = None
        self._short_links = 0
        self._subscriptions: dict[int, tuple[list, int]] = {}
        self._broker = options.broker                 # where the current client connects
        self._secret: str | None = None               # the device secret, for the HTTP fallback
        self._connack_seen = False                    # the current attempt got a CONNACK (accepting or refusing)
        self._unreachable = 0                         # failed connection attempts in a row (no CONNACK)
        self._unreachable_since = 0.0                 # monotonic time of the first of them
        self._on_http = False                         # HTTP is the link: MQTT is only probed
        self._http: HttpVehicle | None = None         # set while HTTP threads own the controller
        self._links: list[HttpVehicle] = []           # every HTTP link whose threads may not have ended yet

    # -- public (thread-safe) -------------------------------------------------------------------------------
    def start(self, delay: float = 0.0) -> None:
        self.worker.call_soon_threadsafe(lambda: self._later(delay, self._begin))

    def stop(self) -> None:
        self.worker.call_soon_threadsafe(self._shutdown)

    @property
    def online_since(self) -> float | None:
        """Monotonic time of the current connection's CONNACK, None while not connected."""
        return self._online_since

    @property
    def done(self) -> bool:
        return self.state in (State.STOPPED, State.FAILED)

    @property
    def http_links(self) -> list[HttpVehicle]:
        """The HTTP links whose threads may still run, for the fleet to abort and join once this vehicle stopped."""
        return list(self._links)

    @property
    def transport(self) -> str:
        """Where the controller's messages go now: ``mqtt``, or ``http`` while the fallback has the controller."""
        return "http" if self._http is not None else "mqtt"

    # -- helpers --------------------------------------------------------------------------------------------
    def _later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = self.worker.call_later(delay, callback)
        self._timers.append(timer)
        if len(self._timers) > 32:
            self._timers = [t for t in self._timers if not t.cancelled and t.due > time.monotonic()]
        return timer

    def _enter_gate(self, then: Callable[[], None]) -> bool:
        """True if this vehicle may start a CONNECT now; otherwise ``then`` is retried shortly."""
        if self.gate is None or self._in_gate:
            return True
        if self.gate.try_acquire():
            self._in_gate = True
            return True
        if not self._on_http:
            self.state = State.WAITING
        self._later(self.rng.uniform(*GATE_RETRY_S), then)
        return False

    def _leave_gate(self) -> None:
        if self._in_gate and self.gate is not None:
            self.gate.release()
        self._in_gate = False

    def _next_seq(self, kind: Kind) -> int:
        self._seq[kind] = self._seq.get(kind, 0) + 1
        return self._seq[kind]

    def _now_ms(self) -> int:
        return envelope.now_ms() + int(self.faults.clock_skew_s * 1000)

    def _message(self, kind: Kind, data: dict[str, Any], seq: int | None = None) -> dict[str, Any]:
        return envelope.message(data, seq=self._next_seq(kind) if seq is None else seq, ts=self._now_ms())

    def _topic(self, kind: Kind) -> str:
        return topics.vehicle_topic(self.vehicle_id, kind)

    def _new_client(self, clean_session: bool, client_id: str | None = None,
                    broker: BrokerAddress | None = None, identity: tuple[str, str] | None = None) -> mqtt.Client:
        """A paho client for ``broker`` (default: the one it registers on); ``identity`` = (certificate file, key
        file) for the mTLS listener."""
        self._broker = broker or self.options.broker
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or self.vehicle_id,
                             clean_session=clean_session, protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        client.connect_timeout = 5.0
        if self._broker.tls:
            client.tls_set(ca_certs=self._broker.ca_file, certfile=identity[0] if identity else None,
                           keyfile=identity[1] if identity else None)
        self.worker.attach(client)
        return client

    def _discard_client(self) -> None:
        if self.client is not None:
            self.worker.detach(self.client)
            try:
                self.client.disconnect()
            except Exception:  # noqa: BLE001, S110 - already gone
                pass
            self.client = None

    def _fail(self, reason: str) -> None:
        self._leave_gate()
        if self._http is not None:
            self._http.abort()          # its threads end; nothing here touches the controller any more
        self.state = State.FAILED
        self.last_error = reason
        self._cancel_timers()
        self._discard_client()
        log_event(log, "vehicle.failed", logging.ERROR, vehicle=self.vehicle_id, reason=reason)

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._tick_timer:
            self._tick_timer.cancel()
            self._tick_timer = None

    def _begin(self) -> None:
        if self._stopping:
            return
        try:
            credentials = self.store.load(self.vehicle_id)
        except ValueError as exc:
            self._fail(str(exc))
            return
        if credentials and credentials.registered:
            self._connect()
        elif credentials and credentials.enrollment_token:
            self._register(credentials.enrollment_token)
        else:
            self._fail("no device secret and no enrollment token")

    # -- 1. registration -----------------------------------------------------------------------------------
    def _register(self, token: str) -> None:
        self.state = State.REGISTERING
        if not self._enter_gate(lambda: self._register(token)):
            return
        if token != self._register_token:
            # One request id per token: a retry re-sends the same request, so a slow answer to the first attempt
            # still matches, and authsvc can recognise the repeat instead of calling the token used.
            self._register_token = token
            self._register_request_id = None
        self._discard_client()
        client = self.client = self._new_client(clean_session=True,
                                                client_id=topics.enrollment_client_id(self.vehicle_id))
        client.username_pw_set(self.vehicle_id, token)
        client.user_data_set(token)
        client.on_connect = self._on_register_connect
        client.on_subscribe = self._on_register_subscribe
        client.on_message = self._on_register_response
        client.on_disconnect = self._on_register_disconnect
        try:
            client.connect(self.options.broker.host, self.options.broker.port, keepalive=KEEPALIVE_S)
        except (OSError, ssl.SSLError) as exc:
            self._retry_registration(f"connect failed: {exc}")
            return
        self._later(REGISTRATION_TIMEOUT_S, lambda c=client: self._registration_timed_out(c))

    def _retry_registration(self, reason: str) -> None:
        self._leave_gate()
        self.last_error = reason
        self._discard_client()
        self.state = State.WAITING
        delay = self.backoff.next_delay()
        log_event(log, "register.retry", logging.WARNING, vehicle=self.vehicle_id, reason=reason,
                  delay_s=round(delay, 1))
        self._later(delay, self._begin)

    def _registration_timed_out(self, client: mqtt.Client) -> None:
        if self.client is client and self.state == State.REGISTERING:
            self._retry_registration("no registration response")

    def _on_register_connect(self, client, token, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._leave_gate()
            self.counters.refused += 1
            self._discard_client()
            self._renew_or_fail(f"enrollment connection refused: {reason_code}")
            return
        client.subscribe(self._topic(Kind.REGISTER_RESPONSE), qos=1)

    def _on_register_subscribe(self, client, token, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            # authz fails closed: an overloaded or unreachable authsvc denies too, so this is worth a retry.
            self._retry_registration("subscription to register/response denied")
            return
        data = {"enrollment_token": token, "model": self.options.model, "sw_version": "fleet-sim/1.0",
                "capabilities": self.controller.capabilities()}
        if self.options.mtls_broker is not None:   # certificate identity: ask for a certificate, not a secret
            data["csr"] = certificate.csr_pem(self.store.ensure_key(self.vehicle_id), self.vehicle_id)
        request = self._message(Kind.REGISTER_REQUEST, data)
        if self._register_request_id is None:
            self._register_request_id = request["msg_id"]
        request["msg_id"] = self._register_request_id
        client.publish(self._topic(Kind.REGISTER_REQUEST), envelope.encode(request), qos=1)
        self.counters.sent["register/request"] += 1

    def _on_register_response(self, client, token, message) -> None:
        try:
            answer = json.loads(message.payload)
            kind, data = answer["type"], answer["data"]
        except (ValueError, KeyError, TypeError):
            log_event(log, "register.bad_response", logging.WARNING, vehicle=self.vehicle_id)
            return
        if data.get("request_msg_id") not in (None, self._register_request_id):
            return  # an answer to an older attempt
        self._leave_gate()
        if kind == "register.accepted":
            secret = data.get("password") or data.get("device_secret")
            if data.get("certificate") and self.options.mtls_broker is not None:
                self.store.store_certificate(self.vehicle_id, data.get("fleet_id"), data["certificate"])
            elif not secret:
                self._fail("register.accepted without a device secret")
                return
            else:
                self.store.store_secret(self.vehicle_id, data.get("fleet_id"), secret)
            self.counters.registered += 1
            log_event(log, "register.accepted", vehicle=self.vehicle_id, fleet=data.get("fleet_id"))
            self.state = State.CONNECTING
            client.disconnect()  # on_disconnect continues with the operational connection
        elif kind == "register.rejected":
            self.counters.register_rejected += 1
            reason = data.get("reason") or "unknown"
            log_event(log, "register.rejected", logging.WARNING, vehicle=self.vehicle_id, reason=reason,
                      detail=data.get("message"))
            self._discard_client()
            if reason in ("token_used", "token_expired", "token_invalid"):
                self._renew_or_fail(f"registration rejected: {reason}")
            else:
                self._fail(f"registration rejected: {reason}")

    def _on_register_disconnect(self, client, token, flags, reason_code, properties) -> None:
        if self.client is not client:
            return
        self.worker.detach(client)
        self.client = None
        if self._stopping:
            self.state = State.STOPPED
        elif self.state == State.CONNECTING:  # registered: now connect as a vehicle
            self.backoff.reset()
            self._connect()
        elif self.state == State.REGISTERING:
            self._retry_registration(f"disconnected while registering: {reason_code}")

    def _renew_or_fail(self, reason: str) -> None:
        token = None
        if self.renew_token is not None:
            try:
                token = self.renew_token(self.vehicle_id)
            except VehicleRevoked as exc:
                # The refusals were a revocation: stop, and say so. Enrolling again would undo the operator's act.
                self._fail(f"revoked by an operator, not enrolling again: {exc}")
                return
            except Exception as exc:  # noqa: BLE001 - the api may be down; report and give up on this vehicle
                reason = f"{reason}; could not get a new enrollment token: {exc}"
        if not token:
            self._fail(reason)
            return
        self.store.store_token(self.vehicle_id, None, token)
        self._refusals = 0
        log_event(log, "register.new_token", vehicle=self.vehicle_id, why=reason)
        self._later(self.backoff.next_delay(), self._begin)

    # -- 2. operational connection ------------------------------------------------------------------------
    def _connect(self) -> None:
        credentials = self.store.load(self.vehicle_id)
        if credentials is None or not credentials.registered:
            self._begin()
            return
        self._secret = None if credentials.certificate_pem else credentials.password
        if self.options.transport == Transport.HTTP:
            self._fall_back("--transport http (the site blocks MQTT)")
            return
        self.state = State.CONNECTING
        self._discard_client()
        if credentials.certificate_pem:
            # certificate identity: the mTLS listener, the certificate as the credential, no password
            if self.options.mtls_broker is None:
                self._fail("the vehicle has a certificate identity: give --mtls-broker")
                return
            client = self.client = self._new_client(clean_session=False, broker=self.options.mtls_broker,
                                                    identity=self.store.identity_files(credentials))
            client.username_pw_set(self.vehicle_id)
        else:
            client = self.client = self._new_client(clean_session=False)
            client.username_pw_set(self.vehicle_id, credentials.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_command
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        self._start_ticking()
        self._attempt()

    def _attempt(self) -> None:
        client = self.client
        if client is None or self._stopping:
            return
        if not self._on_http:
            self.state = State.CONNECTING
        if not self._enter_gate(self._attempt):
            return
        self._connack_seen = False
        # Three connection seqs per attempt: ONLINE (after CONNACK) < the Will (CONNECTIONBROKEN) < OFFLINE (clean
        # shutdown), so whichever of the last two happens is "newer" than ONLINE; the next attempt starts above all.
        self._connection_seq = self._next_seq(Kind.CONNECTION)
        self._seq[Kind.CONNECTION] = self._connection_seq + 2
        will = self._message(Kind.CONNECTION, {"state": "CONNECTIONBROKEN"}, seq=self._connection_seq + 1)
        client.will_set(self._topic(Kind.CONNECTION), envelope.encode(will), qos=1, retain=True)
        try:
            # connect() again on the same client object keeps the unacknowledged QoS 1 messages for resending.
            client.connect(self._broker.host, self._broker.port, keepalive=KEEPALIVE_S)
        except (OSError, ssl.SSLError) as exc:
            self._connect_failed(f"connect failed: {exc}")
            return
        self._later(self.options.connack_timeout_s,
                    lambda c=client, n=self._connection_seq: self._connack_overdue(c, n))

    def _connack_overdue(self, client: mqtt.Client, attempt: int) -> None:
        """No CONNACK in time: close the socket; paho reports the disconnect, which counts the failed attempt."""
        if self.client is not client or self._connection_seq != attempt or self._connack_seen or self._stopping:
            return
        log_event(log, "vehicle.connack_timeout", logging.WARNING, vehicle=self.vehicle_id,
                  after_s=self.options.connack_timeout_s)
        sock = client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _connect_failed(self, reason: str) -> None:
        """An attempt that got no CONNACK: the broker cannot be reached. Counted for the fallback rule."""
        now = time.monotonic()
        if self._unreachable == 0:
            self._unreachable_since = now
        self._unreachable += 1
        if (not self._on_http and self._http is None and self._may_fall_back()
                and self._unreachable >= self.options.fallback_after
                and now - self._unreachable_since >= self.options.fallback_min_span_s):
            self._leave_gate()
            self._fall_back(f"{self._unreachable} connection attempts in a row failed over "
                            f"{now - self._unreachable_since:.0f} s; last: {reason}")
            return
        self._schedule_reconnect(reason)

    def _may_fall_back(self) -> bool:
        # A certificate identity cannot: the api does not take client certificates (docs/PROTOCOL.md).
        return self.options.transport == Transport.AUTO and bool(self.options.api_url) and bool(self._secret)

    def _schedule_reconnect(self, reason: str) -> None:
        self._leave_gate()
        if self._stopping:
            self.state = State.STOPPED
            return
        if self._on_http:
            self._schedule_probe(reason)
            return
        self.state = State.WAITING
        self.last_error = reason
        delay = self.backoff.next_delay()
        log_event(log, "vehicle.reconnect_scheduled", logging.INFO, vehicle=self.vehicle_id, reason=reason,
                  delay_s=round(delay, 2))
        self._later(delay, self._attempt)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._leave_gate()
        self._connack_seen = True
        self._unreachable = 0       # the broker answered: reachable, whatever it said
        if reason_code.is_failure:
            self.counters.refused += 1
            self._refusals += 1
            log_event(log, "vehicle.connect_refused", logging.WARNING, vehicle=self.vehicle_id,
                      reason=str(reason_code))
            if self._refusals >= RENEW_AFTER_REFUSALS and self.renew_token is not None and self._http is None:
                # The secret is not accepted any more (e.g. a fresh backend database): enroll again.
                self._discard_client()
                self.store.forget_secret(self.vehicle_id)
                self._renew_or_fail(f"device secret refused {self._refusals} times")
            return  # paho reports the disconnect next; that schedules the retry
        self._refusals = 0
        self._on_http = False
        self.state = State.ONLINE
        self._online_since = time.monotonic()
        self.last_error = None
        self.counters.connects += 1
        log_event(log, "vehicle.online", vehicle=self.vehicle_id, session_present=flags.session_present,
                  from_http=self._http is not None)
        self._subscribe_commands(client)
        online = self._message(Kind.CONNECTION, {"state": "ONLINE"}, seq=self._connection_seq)
        self._publish(Kind.CONNECTION, envelope.encode(online), qos=1, retain=True)
        if self._http is None:
            self._publish_message(self.controller.status_now(time.monotonic()))
            while self._pending:
                kind, message = self._pending.popleft()
                self._publish(kind, envelope.encode(message), qos=1)
            self._upload_buffer()
        # else: back from the HTTP fallback; its threads keep the controller until the subscription is granted
        # (_on_subscribe) and the poll under way has ended (_http_released)
        # Reset the backoff only once the link has proved stable, so a broker that accepts and then drops us
        # at once (a flapping link, a failing rule) is not hammered every second.
        self._later(STABLE_AFTER_S, lambda c=client: self._stable(c))
        if self.faults.drop_every_s:
            delay = self.faults.drop_every_s * self.rng.uniform(0.8, 1.2)
            self._later(delay, lambda c=client: self._drop_connection(c))

    def _subscribe_commands(self, client: mqtt.Client, attempt: int = 0) -> None:
        if self.client is not client or self.state != State.ONLINE:
            return
        wanted = [(self._topic(Kind.CMD), 1), (topics.fleet_command_topic(), 1)]
        _, mid = client.subscribe(wanted)
        self._subscriptions[mid] = (wanted, attempt)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        wanted, attempt = self._subscriptions.pop(mid, (None, 0))
        if wanted is None:
            return
        if not any(rc.is_failure for rc in reason_codes):
            if self._http is not None and self.client is client and self.state == State.ONLINE:
                self._http.finish()      # commands reach us over MQTT now: stop polling after the poll under way
            return
        # authz fails closed, so an overloaded authsvc can deny our own cmd topic: a vehicle that cannot hear
        # commands must not pretend all is well. Try again with a growing delay.
        self.counters.subscribe_denied += 1
        delay = min(60.0, 2.0 ** attempt) * self.rng.uniform(0.5, 1.0)
        log_event(log, "vehicle.subscribe_denied", logging.WARNING, vehicle=self.vehicle_id, delay_s=round(delay, 1))
        self._later(delay, lambda: self._subscribe_commands(client, attempt + 1))

    def _stable(self, client: mqtt.Client) -> None:
        if self.client is client and self.state == State.ONLINE and self._online_since is not None \
                and time.monotonic() - self._online_since >= STABLE_AFTER_S * 0.99:
            self.backoff.reset()
            self._short_links = 0

    def _upload_buffer(self) -> None:
        if not len(self.buffer):
            return
        count = len(self.buffer)
        batches = 0
        for payload in self.buffer.drain_batches(self.options.batch_max_items, self.options.batch_max_bytes):
            self._publish(Kind.TELEMETRY, payload, qos=1, counter="batch")
            batches += 1
        log_event(log, "telemetry.buffer_uploaded", vehicle=self.vehicle_id, messages=count, batches=batches)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.client is not client:
            return
        was_online = self.state == State.ONLINE
        lasted = time.monotonic() - self._online_since if self._online_since is not None else None
        self._online_since = None
        if was_online and not self._stopping:
            self.counters.disconnects += 1
            self._note_short_link(lasted)
        if self._stopping:
            self.state = State.STOPPED
            self.worker.detach(client)
            self.client = None
            return
        if was_online:
            log_event(log, "vehicle.disconnected", logging.WARNING, vehicle=self.vehicle_id,
                      reason=str(reason_code))
        if self.client is None:
            return
        if not was_online and not self._connack_seen:
            self._connect_failed(f"closed before a CONNACK: {reason_code}")   # refused, reset, TLS, timed out
        else:
            self._schedule_reconnect(f"disconnected: {reason_code}")

    def _note_short_link(self, lasted: float | None) -> None:
        if lasted is None or lasted >= STABLE_AFTER_S or self.faults.drop_every_s:
            return
        self._short_links += 1
        if self._short_links == SHORT_LINKS_HINT:
            log_event(log, "vehicle.connection_unstable", logging.WARNING, vehicle=self.vehicle_id,
                      short_connections=self._short_links,
                      hint="is another client connected with this vehicle id? The broker gives the session to "
                           "the newest connection, so two clients with one id disconnect each other in turn")

    def _drop_connection(self, client: mqtt.Client) -> None:
        """Fault: the link dies without a DISCONNECT (the broker publishes the Will)."""
        if self.client is not client or self.state != State.ONLINE or not self.faults.drop_every_s:
            return
        sock = client.socket()
        if sock is None:
            return
        self.counters.fault("drop_connection")
        log_event(log, "fault.drop_connection", vehicle=self.vehicle_id)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- 3. running ----------------------------------------------------------------------------------------
    def _start_ticking(self) -> None:
        if self._tick_timer is not None:
            return
        now = time.monotonic()
        self._last_tick = now
        self._next_tick = now + self.rng.uniform(0, self.controller.telemetry_interval_s)  # spread the fleet
        self._tick_timer = self.worker.call_at(self._next_tick, self._tick)

    def _tick(self) -> None:
        if self._stopping:
            return
        now = time.monotonic()
        interval = self.controller.telemetry_interval_s
        for out in self.controller.tick(now - self._last_tick, now):
            self._publish_message(out)
        self._last_tick = now
        self._next_tick = max(self._next_tick + interval, now + interval * 0.5)
        jitter = interval * self.rng.uniform(-TICK_JITTER, TICK_JITTER)
        self._tick_timer = self.worker.call_at(self._next_tick + jitter, self._tick)

    def _on_command(self, client, userdata, message) -> None:
        if self._http is not None:
            self._http.forward(message.payload)   # its runner still owns the controller
            return
        for out in self.controller.handle_command(message.payload, time.monotonic()):
            self._publish_message(out)

    def _publish_message(self, out: Outgoing) -> None:
        message = self._message(out.kind, out.data)
        if out.kind is Kind.TELEMETRY:
            self._send_telemetry(message)
        elif self.state == State.ONLINE:
            self._publish(out.kind, envelope.encode(message), qos=1)
        elif out.kind is Kind.MISSION:
            self._pending.append((out.kind, message))  # sent after reconnecting, in order
        # A status made while offline is dropped: a fresh one goes out right after reconnecting.

    def _send_telemetry(self, message: dict[str, Any]) -> None:
        if self.state != State.ONLINE:
            self.buffer.add(message)
            return
        faults, rng = self.faults, self.rng
        payload = envelope.encode(message)
        if faults.malformed_rate and rng.random() < faults.malformed_rate:
            kind = MALFORMED_KINDS[self._malformed_turn % len(MALFORMED_KINDS)]
            self._malformed_turn += 1
            self.counters.fault(f"malformed_{kind}")
            payload = malformed_payload(kind, message)
        if faults.spoof_rate and rng.random() < faults.spoof_rate:
            self._spoof(message)
        if faults.out_of_order_rate and self._held is None and rng.random() < faults.out_of_order_rate:
            self.counters.fault("out_of_order")
            self._held = (self._topic(Kind.TELEMETRY), payload)  # sent after the next message
            return
        self._publish(Kind.TELEMETRY, payload, qos=self.options.telemetry_qos)
        if faults.duplicate_rate and rng.random() < faults.duplicate_rate:
            self.counters.fault("duplicate")
            self._publish(Kind.TELEMETRY, payload, qos=self.options.telemetry_qos)
        if self._held is not None:
            _, held = self._held
            self._held = None
            self._publish(Kind.TELEMETRY, held, qos=self.options.telemetry_qos)

    def _spoof(self, message: dict[str, Any]) -> None:
        """Fault: pretend to be another vehicle — on its topic (ACL denies) or with its id in the payload."""
        victim = self.rng.choice(self.neighbours)
        forged = envelope.message(dict(message["data"], vehicle_id=victim), seq=message["seq"], ts=message["ts"])
        if self.rng.random() < 0.5:
            self.counters.fault("spoof_topic")
            assert self.client is not None
            self.client.publish(topics.vehicle_topic(victim, Kind.TELEMETRY), envelope.encode(forged), qos=1)
        else:
            self.counters.fault("spoof_payload")
            self._publish(Kind.TELEMETRY, envelope.encode(forged), qos=1)

    def _publish(self, kind: Kind, payload: bytes, qos: int, retain: bool = False,
                 counter: str | None = None) -> mqtt.MQTTMessageInfo | None:
        if self.client is None:
            return None
        info = self.client.publish(self._topic(kind), payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.counters.publish_errors += 1
        self.counters.sent[counter or kind.value] += 1
        return info

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if self._stopping and mid == self._offline_mid:
            client.disconnect()

    # -- 5. shutdown ---------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._leave_gate()
        self._cancel_timers()
        if self._http is not None:
            self._http.close()      # it reports the mission failed over HTTP; _http_released goes on from there
            # (it does not wait: this thread serves other vehicles too; Fleet.stop joins the link's threads)
            return
        self._close_mqtt()

    def _close_mqtt(self) -> None:
        client = self.client
        if client is None or self.state != State.ONLINE:
            self._discard_client()
            if self.state != State.FAILED:
                self.state = State.STOPPED
            return
        for out in self.controller.shutdown():
            self._publish_message(out)
        offline = self._message(Kind.CONNECTION, {"state": "OFFLINE"}, seq=self._connection_seq + 2)
        info = self._publish(Kind.CONNECTION, envelope.encode(offline), qos=1, retain=True)
        self._offline_mid = info.mid if info is not None else None
        # Without a PUBACK in time, disconnect anyway (the retained OFFLINE may then be missing).
        self.worker.call_later(SHUTDOWN_PUBACK_TIMEOUT_S, lambda: self.client is client and client.disconnect())

    # -- 4b. the HTTP fallback -----------------------------------------------------------------------------
    def _fall_back(self, reason: str) -> None:
        """Hand the controller to HTTP threads; MQTT is only probed from now on (docs/PROTOCOL.md)."""
        if not self._secret or not self.options.api_url:
            self._fail("the HTTP fallback needs a device secret and the api URL (a certificate identity cannot use "
                       "it: the api does not take client certificates)")
            return
        self._on_http = True
        self._unreachable = 0
        self.state = State.HTTP
        self.last_error = reason
        self.counters.fallbacks += 1
        if self._tick_timer is not None:   # the HTTP runner ticks the controller now
            self._tick_timer.cancel()
            self._tick_timer = None
        backlog = [(kind, envelope.encode(message)) for kind, message in self._pending]
        self._pending.clear()
        backlog += [(Kind.TELEMETRY, payload) for payload in
                    self.buffer.drain_batches(self.options.batch_max_items, self.options.batch_max_bytes)]
        http = HttpVehicle(self.options.api_url, self.vehicle_id, self._secret, self.controller,
                           seq={k: n for k, n in self._seq.items() if k is not Kind.CONNECTION}, backlog=backlog,
                           clock_skew_s=self.faults.clock_skew_s,
                           on_released=lambda: self.worker.call_soon_threadsafe(lambda: self._http_released(http)))
        self._http = http
        self._links = [link for link in self._links if link.alive] + [http]
        log_event(log, "vehicle.http_fallback", logging.WARNING, vehicle=self.vehicle_id, reason=reason,
                  api=self.options.api_url, backlog=len(backlog))
        http.start()
        if self.options.transport == Transport.AUTO and self.client is not None:
            self._schedule_probe()

    def _schedule_probe(self, reason: str | None = None) -> None:
        delay = self.options.probe_every_s * self.rng.uniform(1 - PROBE_JITTER, 1 + PROBE_JITTER)
        if reason:
            log_event(log, "vehicle.mqtt_probe_failed", logging.INFO, vehicle=self.vehicle_id, reason=reason,
                      next_in_s=round(delay, 1))
        self._later(delay, self._attempt)

    def _http_released(self, http: HttpVehicle) -> None:
        """The HTTP runner has ended (MQTT is back, shutting down, or its credentials were refused): the controller
        is this thread's again."""
        if self._http is not http:
            return
        self._http = None
        for kind, count in http.seq.items():
            self._seq[kind] = max(self._seq.get(kind, 0), count)
        leftovers = []                       # commands queued after the runner's last look (MQTT ones, mostly)
        while not http.commands.empty():
            item = http.commands.get_nowait()
            if item is not None:
                leftovers.append(item[0])
        if self.state == State.FAILED:
            return
        if self._stopping:
            self._close_mqtt()
            return
        if http.error is not None:
            self._fail(f"HTTP fallback stopped: {http.error}")
            return
        log_event(log, "vehicle.http_ended", vehicle=self.vehicle_id, sent={k.value: n for k, n in http.sent.items()})
        now = time.monotonic()
        for payload in leftovers:
            for out in self.controller.handle_command(payload, now):
                self._publish_message(out)
        if self.state == State.ONLINE:
            self._publish_message(self.controller.status_now(now))
        self._start_ticking()
