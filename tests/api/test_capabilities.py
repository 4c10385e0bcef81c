"""The capability sheet: reported with registration over MQTT, stored and versioned, shown by the api, and the
rule that refuses (422, naming the capability) a mission the vehicle cannot do."""
from __future__ import annotations

from fleetcore import topics
from tests.support.operators import unique
from tests.support.vehicle import MqttVehicle

SHEET = {"task_types": ["pick", "drop"], "max_payload_kg": 50, "max_speed_mps": 2.0, "battery_capacity_wh": 1200,
         "vendor": {"series": "AMR-2", "lidar": True}}


def register_with(stack, vehicle_id: str, token: str, sheet: dict | None) -> dict:
    """Register over MQTT sending ``sheet`` as data.capabilities; returns the answer."""
    vehicle = MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle_id)
    vehicle.connect_enrolling(token)
    try:
        assert vehicle.subscribe(topics.vehicle_topic(vehicle_id, topics.Kind.REGISTER_RESPONSE)) == [1]
        data = {"enrollment_token": token, "model": "AMR-2"}
        if sheet is not None:
            data["capabilities"] = sheet
        vehicle.publish(topics.Kind.REGISTER_REQUEST, data)
        return vehicle.wait_for_message(lambda m: m.topic.endswith("/register/response"), 15).json()
    finally:
        vehicle.close()


def new_vehicle(operator) -> tuple[str, str]:
    vehicle_id = unique("cap")
    created = operator.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": operator.fleet}).json()
    return vehicle_id, created["enrollment"]["token"]


def mission(operator, vehicle_id: str, **extra):
    return operator.post("/api/v1/missions", json={"vehicle_id": vehicle_id, "name": "job",
                                                    "waypoints": [{"lat": 48.1, "lon": 11.5}], **extra})


def test_the_sheet_comes_with_registration_and_missions_beyond_it_are_refused(operator, stack):
    vehicle_id, token = new_vehicle(operator)
    assert operator.get(f"/api/v1/vehicles/{vehicle_id}/capabilities").json()["current"] is None
    assert register_with(stack, vehicle_id, token, SHEET)["type"] == "register.accepted"
    shown = operator.get(f"/api/v1/vehicles/{vehicle_id}/capabilities").json()
    current = shown["current"]
    assert (current["version"], current["task_types"], current["max_payload_kg"], current["max_speed_mps"],
            current["battery_capacity_wh"], current["source"]) == (1, ["pick", "drop"], 50, 2.0, 1200, "registration")
    assert current["document"] == SHEET, "the whole document is kept, unknown keys too"

    cases = [({"tasks": [{"type": "weld"}]}, "task_types"), ({"payload_kg": 80}, "max_payload_kg"),
             ({"waypoints": [{"lat": 48.1, "lon": 11.5, "speed_mps": 3.5}]}, "max_speed_mps")]
    for extra, capability in cases:
        refused = mission(operator, vehicle_id, **extra)
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert body["code"] == "beyond_capability" and body["details"]["capability"] == capability
        assert capability in body["message"] or (capability == "task_types" and "weld" in body["message"])
    fits = mission(operator, vehicle_id, tasks=[{"type": "pick"}], payload_kg=50,
                   waypoints=[{"lat": 48.1, "lon": 11.5, "speed_mps": 2.0}])
    assert fits.status_code == 201, fits.text


def test_a_new_sheet_is_a_new_version_and_the_same_one_is_not(operator, stack):
    vehicle_id, token = new_vehicle(operator)
    register_with(stack, vehicle_id, token, SHEET)
    again = operator.post(f"/api/v1/vehicles/{vehicle_id}/enrollment").json()["token"]
    register_with(stack, vehicle_id, again, SHEET)
    assert [s["version"] for s in operator.get(f"/api/v1/vehicles/{vehicle_id}/capabilities").json()["history"]] \
        == [1], "the same sheet again changes nothing"
    upgraded = operator.post(f"/api/v1/vehicles/{vehicle_id}/enrollment").json()["token"]
    register_with(stack, vehicle_id, upgraded, {**SHEET, "task_types": ["pick", "drop", "weld"]})
    shown = operator.get(f"/api/v1/vehicles/{vehicle_id}/capabilities").json()
    assert shown["current"]["version"] == 2 and [s["version"] for s in shown["history"]] == [2, 1]
    assert mission(operator, vehicle_id, tasks=[{"type": "weld"}]).status_code == 201


def test_a_vehicle_without_a_sheet_is_not_checked_and_a_bad_sheet_is_refused(operator, stack):
    vehicle_id, token = new_vehicle(operator)
    assert register_with(stack, vehicle_id, token, None)["type"] == "register.accepted"
    assert mission(operator, vehicle_id, tasks=[{"type": "anything"}], payload_kg=10_000).status_code == 201
    other_id, other_token = new_vehicle(operator)
    answer = register_with(stack, other_id, other_token, {"task_types": "pick", "max_speed_mps": -1})
    assert answer["type"] == "register.rejected" and answer["data"]["reason"] == "malformed"
    assert "capabilities.task_types" in answer["data"]["message"]
    assert operator.get(f"/api/v1/vehicles/{other_id}").json()["status"] == "pending"
