"""A VDA 5050 2.0 vehicle for tests (paho): connects with our credentials under its VDA identity and speaks the
standard's topics (docs/VDA5050.md). ``state`` builds a message with every field the official schema requires."""
from __future__ import annotations

import json
from datetime import UTC, datetime

from fleetcore import topics
from tests.support.operators import unique
from tests.support.vehicle import MqttVehicle
from tests.support.waiting import wait_until

ORIGIN = (48.137, 11.575)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def create_vda_vehicle(operator, stack, manufacturer: str = "Acme") -> tuple[str, str, str]:
    """A VDA vehicle created over the API and enrolled like any other; returns (vehicle id, serial, secret)."""
    vehicle_id, serial = unique("agv"), unique("SN")
    response = operator.post("/api/v1/vehicles", json={
        "id": vehicle_id, "fleet_id": operator.fleet,
        "vda5050": {"manufacturer": manufacturer, "serial_number": serial, "map_id": "site",
                    "origin_lat": ORIGIN[0], "origin_lon": ORIGIN[1]}})
    assert response.status_code == 201, response.text
    # enrollment is ours: whoever installs the vehicle exchanges the one-time token for its device secret
    secret = MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle_id).register(
        response.json()["enrollment"]["token"])
    return vehicle_id, serial, secret


class VdaVehicle(MqttVehicle):
    def __init__(self, host: str, port: int, vehicle_id: str, manufacturer: str, serial_number: str) -> None:
        super().__init__(host, port, vehicle_id)
        self.manufacturer, self.serial_number = manufacturer, serial_number
        self.header_ids: dict[str, int] = {}

    def topic(self, subtopic: topics.VdaSubtopic) -> str:
        return topics.vda_topic(self.manufacturer, self.serial_number, subtopic)

    def connect_vda(self, password: str) -> None:
        """Connect with the standard's Last Will (connection CONNECTIONBROKEN, QoS 1, retained), say ONLINE and
        subscribe to order and instantActions."""
        will = json.dumps(self.headerful("connection", {"connectionState": "CONNECTIONBROKEN"}))
        self.connect(password, will=(self.topic(topics.VdaSubtopic.CONNECTION), will))
        self.send(topics.VdaSubtopic.CONNECTION, {"connectionState": "ONLINE"}, qos=1, retain=True)
        for subtopic in (topics.VdaSubtopic.ORDER, topics.VdaSubtopic.INSTANT_ACTIONS):
            assert self.subscribe(self.topic(subtopic), qos=0) == [0]

    def headerful(self, counter: str, body: dict) -> dict:
        header_id = self.header_ids.get(counter, -1) + 1
        self.header_ids[counter] = header_id
        return {"headerId": header_id, "timestamp": now_iso(), "version": "2.0.0",
                "manufacturer": self.manufacturer, "serialNumber": self.serial_number, **body}

    def send(self, subtopic: topics.VdaSubtopic, body: dict, *, qos: int = 0, retain: bool = False) -> dict:
        message = self.headerful(subtopic.value, body)
        self.client.publish(self.topic(subtopic), json.dumps(message), qos=qos, retain=retain).wait_for_publish(10)
        return message

    def state(self, **fields) -> dict:
        body = {"orderId": "", "orderUpdateId": 0, "lastNodeId": "", "lastNodeSequenceId": 0, "nodeStates": [],
                "edgeStates": [], "driving": False, "paused": False, "actionStates": [],
                "batteryState": {"batteryCharge": 80.0, "charging": False}, "operatingMode": "AUTOMATIC",
                "errors": [], "safetyState": {"eStop": "NONE", "fieldViolation": False},
                "agvPosition": {"x": 0.0, "y": 0.0, "theta": 0.0, "mapId": "site", "positionInitialized": True}}
        body.update(fields)
        return self.send(topics.VdaSubtopic.STATE, body)

    def wait_for_vda(self, subtopic: topics.VdaSubtopic, predicate=lambda m: True, timeout: float = 10.0) -> dict:
        topic = self.topic(subtopic)
        return self.wait_for_message(lambda m: m.topic == topic and predicate(m.json()), timeout).json()


def connected_vda_vehicle(operator, stack) -> VdaVehicle:
    vehicle_id, serial, secret = create_vda_vehicle(operator, stack)
    agv = VdaVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle_id, "Acme", serial)
    agv.secret = secret
    agv.connect_vda(secret)
    wait_until(lambda: operator.get(f"/api/v1/vehicles/{vehicle_id}").json()["presence"]["online"],
               message=f"{vehicle_id} never showed as online")
    return agv

