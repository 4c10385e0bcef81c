"""A single synchronous MQTT client for scripted checks: connect with given credentials, publish exactly what a
scenario says (including things a well-behaved vehicle never does), wait for answers."""
from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleetcore import envelope, topics
from fleetcore.topics import Kind
from simulator.vehicle import BrokerAddress


class ProbeError(AssertionError):
    pass


class ProbeClient:
    def __init__(self, broker: BrokerAddress, client_id: str) -> None:
        self.broker = broker
        self.client_id = client_id
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connack: str | None = None
        self._done = threading.Event()
        self.client: mqtt.Client | None = None

    def connect(self, username: str, password: str, timeout: float = 10.0) -> str:
        """Connect; returns the CONNACK reason ("Success" or why not) and stays connected only on success."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                             protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        client.username_pw_set(username, password)
        if self.broker.tls:
            client.tls_set(ca_certs=self.broker.ca_file)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = lambda c, u, message: self.messages.put(message)
        self._connack = None
        self._done.clear()
        client.connect(self.broker.host, self.broker.port, keepalive=30)
        client.loop_start()
        self.client = client
        if not self._done.wait(timeout):
            self.close()
            raise ProbeError(f"{self.client_id}: no CONNACK within {timeout} s")
        if self._connack != "Success":
            self.close()
        return self._connack or "no answer"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connack = str(reason_code)
        self._done.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connack is None:
            self._connack = f"disconnected: {reason_code}"
        self._done.set()

    def subscribe(self, topic: str, timeout: float = 10.0) -> list[int]:
        assert self.client is not None
        granted: list[int] = []
        done = threading.Event()

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            granted.extend(rc.value for rc in reason_codes)
            done.set()
        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic, qos=1)
        if not done.wait(timeout):
            raise ProbeError(f"{self.client_id}: no SUBACK for {topic}")
        return granted

    def publish(self, topic: str, payload: bytes, timeout: float = 10.0) -> None:
        """QoS 1 publish, waiting for the PUBACK (the broker acks even a publish its ACL dropped)."""
        assert self.client is not None
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise ProbeError(f"{self.client_id}: no PUBACK for {topic}")

    def publish_message(self, kind: Kind, data: dict[str, Any], vehicle_id: str | None = None) -> dict[str, Any]:
        message = envelope.message(data, seq=int(time.time() * 1000))
        self.publish(topics.vehicle_topic(vehicle_id or self.client_id, kind), envelope.encode(message))
        return message

    def wait_for(self, predicate: Callable[[mqtt.MQTTMessage], bool], timeout: float = 15.0) -> mqtt.MQTTMessage:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self.messages.get(timeout=max(0.01, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                continue
            if predicate(message):
                return message
        raise ProbeError(f"{self.client_id}: no matching message within {timeout} s")

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None


def register(broker: BrokerAddress, vehicle_id: str, token: str, timeout: float = 15.0) -> str:
    """The registration flow of docs/PROTOCOL.md (Registration), step by step; returns the device secret."""
    probe = ProbeClient(broker, topics.enrollment_client_id(vehicle_id))   # never the vehicle's own session
    answer = probe.connect(vehicle_id, token)
    if answer != "Success":
        raise ProbeError(f"{vehicle_id}: enrollment connection refused: {answer}")
    try:
        if probe.subscribe(topics.vehicle_topic(vehicle_id, Kind.REGISTER_RESPONSE)) != [1]:
            raise ProbeError(f"{vehicle_id}: subscription to register/response denied")
        request = probe.publish_message(Kind.REGISTER_REQUEST, {"enrollment_token": token, "model": "probe"},
                                        vehicle_id=vehicle_id)
        reply = json.loads(probe.wait_for(lambda m: m.topic.endswith("/register/response"), timeout).payload)
    finally:
        probe.close()
    if reply.get("type") != "register.accepted" or reply["data"].get("request_msg_id") != request["msg_id"]:
        raise ProbeError(f"{vehicle_id}: registration not accepted: {reply}")
    return reply["data"]["password"]
