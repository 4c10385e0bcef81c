"""A minimal, synchronous MQTT vehicle for tests (paho-mqtt 2.x, MQTT 3.1.1).

It does exactly what a test tells it, nothing on its own: connect (with an enrollment token or a device secret),
register, publish envelopes on its own topics (or any raw bytes anywhere, to probe the ACL), and collect every
message it receives so tests can wait for a command.

A QoS 1 ``publish`` returns once the broker's PUBACK came *and* the broker's rule actions have processed it
(stored, dead-lettered or counted as failed): EMQX acknowledges on receipt, before its actions write to the
database, so a test that read the database right after a PUBACK would race. The wait is on the broker's action
metrics (tests/support/delivery.py), registered per broker port with ``wait_for_actions_on``;
``publish_nowait`` does not wait for anything.
"""
from __future__ import annotations

import itertools
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleetcore import envelope, topics
from tests.support.waiting import wait_until

# MQTT port → "wait until the broker's rule actions have processed everything acknowledged so far"
_ACTIONS_BY_PORT: dict[int, Callable[[], None]] = {}


def wait_for_actions_on(ports: Iterable[int], wait_processed: Callable[[], None]) -> None:
    """Make every vehicle publishing through these broker ports wait for the broker's actions after a PUBACK."""
    for port in ports:
        _ACTIONS_BY_PORT[port] = wait_processed


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class ConnectRefused(AssertionError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"connection refused: {reason}")
        self.reason = reason


class MqttVehicle:
    def __init__(self, host: str, port: int, vehicle_id: str, *, transport: str = "tcp") -> None:
        self.host, self.port, self.vehicle_id = host, port, vehicle_id
        self.transport = transport
        self.client: mqtt.Client | None = None
        self.received: queue.Queue[Received] = queue.Queue()
        self.history: list[Received] = []
        self._seq = itertools.count(1)
        self._connected = threading.Event()
        self._connect_result: str | None = None
        self.disconnects: list[str] = []
        self.disconnected_at: float | None = None      # time.monotonic() of the last disconnect

    # -- connection ----------------------------------------------------------------------------------------
    def connect(self, password: str | None, *, clean_session: bool = False, will: bool | tuple[str, str] = True,
                username: str | None = None, client_id: str | None = None, timeout: float = 10.0,
                tls_ca: str | None = None, tls_cert: tuple[str, str] | None = None) -> MqttVehicle:
        """Connect and wait for the CONNACK. ``tls_cert`` = (certificate file, key file): a client certificate
        for the mTLS listener, where ``password`` is None (docs/PROTOCOL.md, Certificate identity)."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or self.vehicle_id,
                             clean_session=clean_session, protocol=mqtt.MQTTv311, transport=self.transport)
        client.username_pw_set(username if username is not None else self.vehicle_id, password)
        if tls_ca:
            client.tls_set(ca_certs=tls_ca, certfile=tls_cert[0] if tls_cert else None,
                           keyfile=tls_cert[1] if tls_cert else None)
        if isinstance(will, tuple):  # (topic, payload): another protocol's Last Will (tests/support/vda5050.py)
            client.will_set(will[0], will[1], qos=1, retain=True)
        elif will:
            client.will_set(topics.vehicle_topic(self.vehicle_id, topics.Kind.CONNECTION),
                            envelope.encode(envelope.message({"state": "CONNECTIONBROKEN"}, seq=0)), qos=1,
                            retain=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.reconnect_delay_set(60, 120)  # tests decide about reconnects themselves
        self._connected.clear()
        self._connect_result = None
        self.client = client
        client.connect(self.host, self.port, keepalive=30)
        client.loop_start()
        wait_until(lambda: self._connect_result is not None, timeout, message="no CONNACK")
        if self._connect_result != "Success":
            self.close()
            raise ConnectRefused(self._connect_result)
        return self

    def connect_enrolling(self, enrollment_token: str, *, clean_session: bool = True,
                          timeout: float = 10.0) -> MqttVehicle:
        """Connect as the vehicle's enrolling client (``_enroll-{vid}``, docs/PROTOCOL.md Registration)."""
        return self.connect(enrollment_token, clean_session=clean_session, will=False, timeout=timeout,
                            client_id=topics.enrollment_client_id(self.vehicle_id))

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connect_result = str(reason_code)
        if not reason_code.is_failure:
            self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.disconnected_at = time.monotonic()
        self._connected.clear()
        self.disconnects.append(str(reason_code))
        if self._connect_result is None:
            self._connect_result = str(reason_code)

    def _on_message(self, client, userdata, message) -> None:
        item = Received(message.topic, message.payload, message.qos, bool(message.retain))
        self.history.append(item)
        self.received.put(item)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def close(self) -> None:
        """Clean disconnect (no Last Will)."""
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def drop(self) -> None:
        """Abrupt close of the socket (the broker publishes the Last Will)."""
        if self.client is not None:
            sock = self.client.socket()
            self.client.loop_stop()
            if sock is not None:
                sock.close()
            self.client = None

    # -- messaging -----------------------------------------------------------------------------------------
    def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> list[int]:
        granted: list[int] = []
        done = threading.Event()

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            granted.extend(rc.value for rc in reason_codes)
            done.set()
        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic, qos)
        assert done.wait(timeout), f"no SUBACK for {topic}"
        return granted

    def subscribe_commands(self) -> None:
        assert self.subscribe(topics.vehicle_topic(self.vehicle_id, topics.Kind.CMD)) == [1]
        assert self.subscribe(topics.fleet_command_topic()) == [1]

    def publish_raw(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                    timeout: float = 10.0) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0:
            info.wait_for_publish(timeout)
            assert info.is_published(), f"no PUBACK for {topic}"
            self.wait_processed()

    def wait_processed(self) -> None:
        """Wait until the broker's rule actions have processed what it acknowledged (see the module doc)."""
        wait = _ACTIONS_BY_PORT.get(self.port)
        if wait is not None:
            wait()

    def publish(self, kind: topics.Kind, data: dict, *, qos: int = 1, seq: int | None = None,
                msg_id: str | None = None, ts: int | None = None) -> dict:
        message = envelope.message(data, seq=next(self._seq) if seq is None else seq, msg_id=msg_id, ts=ts)
        self.publish_raw(topics.vehicle_topic(self.vehicle_id, kind), envelope.encode(message), qos=qos)
        return message

    def publish_nowait(self, kind: topics.Kind, data: dict, *, qos: int = 1) -> tuple[dict, mqtt.MQTTMessageInfo]:
        """Queue a message without waiting for its PUBACK (paho resends it after a reconnect)."""
        message = envelope.message(data, seq=next(self._seq))
        info = self.client.publish(topics.vehicle_topic(self.vehicle_id, kind), envelope.encode(message), qos=qos)
        return message, info

    def telemetry(self, lat: float = 48.137, lon: float = 11.575, **fields) -> dict:
        return self.publish(topics.Kind.TELEMETRY, {"lat": lat, "lon": lon, **fields})

    def mission_event(self, mission_id: str, event: str, **fields) -> dict:
        return self.publish(topics.Kind.MISSION, {"mission_id": mission_id, "event": event, **fields})

    def wait_for_message(self, predicate=lambda m: True, timeout: float = 10.0) -> Received:
        seen: list[Received] = []
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not deadline.is_set():
                try:
                    item = self.received.get(timeout=0.05)
                except queue.Empty:
                    continue
                if predicate(item):
                    for other in seen:  # keep what this wait did not want for the next wait
                        self.received.put(other)
                    return item
                seen.append(item)
        finally:
            timer.cancel()
        for other in seen:
            self.received.put(other)
        raise AssertionError(f"{self.vehicle_id}: no matching message within {timeout} s; got "
                             f"{[(m.topic, m.payload[:120]) for m in seen]}")

    def wait_for_command(self, command_type: str, timeout: float = 10.0) -> dict:
        def wanted(message: Received) -> bool:
            try:
                return message.json().get("type") == command_type
            except ValueError:
                return False
        return self.wait_for_message(wanted, timeout).json()

    # -- registration ----------------------------------------------------------------------------------------
    def register(self, enrollment_token: str, timeout: float = 15.0) -> str:
        """Enroll with a one-time token over MQTT; returns the device secret. Leaves the vehicle disconnected."""
        self.connect_enrolling(enrollment_token)
        try:
            assert self.subscribe(topics.vehicle_topic(self.vehicle_id, topics.Kind.REGISTER_RESPONSE)) == [1]
            request = self.publish(topics.Kind.REGISTER_REQUEST,
                                   {"enrollment_token": enrollment_token, "model": "test-rig", "sw_version": "1.0"})
            answer = self.wait_for_message(lambda m: m.topic.endswith("/register/response"), timeout).json()
        finally:
            self.close()
        assert answer["type"] == "register.accepted", answer
        assert answer["data"]["request_msg_id"] == request["msg_id"]
        return answer["data"]["password"]


def new_msg_id() -> str:
    return str(uuid.uuid4())
