"""Abuse the broker lets through no longer, on the real embedded stack (production's emqx.conf, EMBEDDED_LIMITS):
password guessing and reconnect loops on one client id end in a ban; a vehicle cannot leave retained telemetry."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from base64 import b64encode
from typing import Any

from fleetcore import envelope, topics
from fleetctl.stack import API_KEY_NAME
from tests.support.database import rejected, rows
from tests.support.reliability import record
from tests.support.vehicle import ConnectRefused, MqttVehicle
from tests.support.waiting import wait_until

FLAPPING_MAX_COUNT = 15          # emqx.conf flapping_detect.max_count (window_time 1m)


def broker_api(stack, method: str, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(stack.url("emqx_api") + "/api/v5" + path, method=method)
    token = b64encode(f"{API_KEY_NAME}:{stack.secrets['FLEET_EMQX_API_SECRET']}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as error:
        return error.code, None


def _refused(vehicle: MqttVehicle, password: str) -> bool:
    try:
        vehicle.connect(password)
    except ConnectRefused:
        return True
    vehicle.close()
    return False


def test_guessing_a_vehicles_password_gets_its_client_id_banned_until_an_operator_lifts_it(enroll, stack):
    vehicle = enroll(connect=False)
    attacker = MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle.vehicle_id)
    assert all(_refused(attacker, f"guess-{i}") for i in range(FLAPPING_MAX_COUNT))
    status, body = broker_api(stack, "GET", "/banned?limit=1000")
    assert status == 200
    [ban] = [b for b in body["data"] if b["who"] == vehicle.vehicle_id]
    assert (ban["as"], ban["by"]) == ("clientid", "flapping detector")
    assert _refused(vehicle, vehicle.secret), "the right password is refused while the client id is banned"
    assert broker_api(stack, "DELETE", f"/banned/clientid/{vehicle.vehicle_id}")[0] == 204
    vehicle.connect(vehicle.secret)
    assert vehicle.connected
    record("security", "password guessing on one vehicle id (flapping detection)", attempts=FLAPPING_MAX_COUNT,
           banned=1, right_password_refused_while_banned=1, admitted_after_unban=1)


def test_a_vehicle_cannot_publish_retained_on_its_own_data_topics(enroll, stack):
    vehicle = enroll()
    data_kinds = (topics.Kind.TELEMETRY, topics.Kind.STATUS, topics.Kind.MISSION)
    for kind in data_kinds:
        vehicle.publish_raw(topics.vehicle_topic(vehicle.vehicle_id, kind),
                            envelope.encode(envelope.message({"lat": 1.0, "lon": 2.0}, seq=1)), retain=True)
    denied = wait_until(lambda: len(r := rejected(stack.database_url, vehicle.vehicle_id)) >= len(data_kinds) and r)
    assert sorted((r["topic"], r["reason"]) for r in denied) == \
        sorted((topics.vehicle_topic(vehicle.vehicle_id, kind), "acl_denied") for kind in data_kinds)
    # the same topic without retain is still the vehicle's (the decision is cached per topic, QoS and retain); the
    # retained sample never reached the database: one row, the plain one
    plain = vehicle.publish(topics.Kind.TELEMETRY, {"lat": 3.0, "lon": 4.0})
    stored = wait_until(lambda: rows(stack.database_url, "SELECT msg_id FROM telemetry WHERE vehicle_id = %s",
                                     (vehicle.vehicle_id,)), message="the plain publish was not stored")
    assert [r["msg_id"] for r in stored] == [plain["msg_id"]]
    record("security", "retained publishes on a vehicle's own telemetry/status/mission", probes=len(data_kinds),
           retained=0, dead_lettered=len(denied))
