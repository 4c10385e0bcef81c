"""The acceptance test procedure (README.md → "Testing guide", steps 1–4), step by step, as the people in it meet
the system: a vehicle maker's paho client over MQTT, an operator over REST (what Postman sends), and an
investigator reading the database. The README describes the same steps by hand.
"""
from __future__ import annotations

import pytest

from fleetcore import topics
from tests.support.database import rejected, rows
from tests.support.vehicle import ConnectRefused, MqttVehicle
from tests.support.waiting import wait_until

WAYPOINTS = [{"lat": 48.1371, "lon": 11.5754}, {"lat": 48.1402, "lon": 11.5601, "name": "depot"}]


def test_step1_registered_vehicle_telemetry_is_stored_with_device_and_server_time(enroll, stack):
    vehicle = enroll()
    sent = [vehicle.telemetry(lat=48.137 + i / 1000, lon=11.575, speed_mps=4.0, battery_pct=90 - i) for i in range(5)]
    stored = wait_until(lambda: len(found := rows(stack.database_url,
                                                   "SELECT msg_id, ts, received_at, lat, battery_pct FROM telemetry "
                                                   "WHERE vehicle_id = %s ORDER BY ts", (vehicle.vehicle_id,))) == 5
                        and found, message="telemetry rows never appeared")
    assert [r["msg_id"] for r in stored] == [m["msg_id"] for m in sent]
    for row, message in zip(stored, sent, strict=True):
        assert int(row["ts"].timestamp() * 1000) == message["ts"]     # device time, as sent
        assert row["received_at"] is not None                           # server time, from the broker
    assert stored[-1]["battery_pct"] == 86


def test_step1_unregistered_and_unauthenticated_vehicles_are_refused(enroll, operator, stack):
    port = stack.config.ports.mqtt
    with pytest.raises(ConnectRefused):
        MqttVehicle("127.0.0.1", port, "never-registered-1").connect("some-guess")
    registered = enroll(connect=False)
    with pytest.raises(ConnectRefused):
        MqttVehicle("127.0.0.1", port, registered.vehicle_id).connect(registered.secret + "x")
    with pytest.raises(ConnectRefused):     # someone else's valid secret under another client id
        MqttVehicle("127.0.0.1", port, "impostor-1").connect(registered.secret, username=registered.vehicle_id)


def test_step1_unauthorized_data_is_dead_lettered_not_stored(enroll, stack):
    owner, intruder = enroll(), enroll()
    intruder.publish_raw(topics.vehicle_topic(owner.vehicle_id, topics.Kind.TELEMETRY),
                         b'{"v":1,"msg_id":"spoof-1","seq":1,"ts":1,"data":{"lat":1,"lon":1}}')
    intruder.publish(topics.Kind.TELEMETRY, {"lat": 1.0, "lon": 1.0, "vehicle_id": owner.vehicle_id})
    intruder.publish_raw(topics.vehicle_topic(intruder.vehicle_id, topics.Kind.TELEMETRY), b"{not json")
    reasons = wait_until(lambda: len(r := rejected(stack.database_url, intruder.vehicle_id)) >= 3 and r)
    assert sorted(r["reason"] for r in reasons) == ["acl_denied", "not_json", "vehicle_id_mismatch"], reasons
    assert rows(stack.database_url, "SELECT 1 FROM telemetry WHERE vehicle_id = %s", (owner.vehicle_id,)) == []
    assert intruder.connected, "bad input must not cost the vehicle its connection"


def test_steps2_to_4_mission_request_response_and_progress(operator, enroll, stack):
    vehicle = enroll()
    # Step 2: the operator's mission request (what the Postman collection sends).
    response = operator.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "inspect depot",
                                                        "waypoints": WAYPOINTS, "priority": 3, "timeout_s": 600})
    assert response.status_code == 201, response.text
    mission = response.json()
    stored = rows(stack.database_url, "SELECT state, vehicle_id FROM missions WHERE id = %s", (mission["id"],))
    assert stored and stored[0]["vehicle_id"] == vehicle.vehicle_id
    command = vehicle.wait_for_command("mission.dispatch")
    assert command["data"]["mission_id"] == mission["id"]
    assert command["data"]["waypoints"] == [dict(w) for w in WAYPOINTS]

    # Step 3: the vehicle's response is verified (only the assigned vehicle may answer) and recorded.
    intruder = enroll()
    intruder.mission_event(mission["id"], "accepted")
    wait_until(lambda: rejected(stack.database_url, intruder.vehicle_id))
    vehicle.mission_event(mission["id"], "accepted")
    wait_until(lambda: _state(stack, mission["id"]) == "accepted")

    # Step 4: progress with timestamps, then completion.
    for percent in (25, 50, 75):
        vehicle.mission_event(mission["id"], "progress", progress={"percent": percent, "step": f"leg {percent}",
                                                                  "eta_s": 100 - percent})
    wait_until(lambda: rows(stack.database_url, "SELECT progress_percent FROM missions WHERE id = %s",
                            (mission["id"],))[0]["progress_percent"] == 75)
    vehicle.mission_event(mission["id"], "completed")
    wait_until(lambda: _state(stack, mission["id"]) == "completed")

    events = rows(stack.database_url, "SELECT event, from_state, to_state, actor_type, actor_id, server_time, "
                  "device_time FROM mission_events WHERE mission_id = %s ORDER BY id", (mission["id"],))
    assert [(e["event"], e["to_state"]) for e in events] == [
        ("created", "queued"), ("dispatch", "dispatched"), ("accepted", "accepted"), ("progress", "in_progress"),
        ("progress", "in_progress"), ("progress", "in_progress"), ("completed", "completed")]
    assert all(e["server_time"] for e in events)
    assert all(e["device_time"] and e["actor_id"] == vehicle.vehicle_id for e in events if e["actor_type"] == "vehicle")

    report = operator.get("/api/v1/reports/missions", params={"vehicle_id": vehicle.vehicle_id}).json()
    [row] = report["missions"]
    assert row["id"] == mission["id"] and row["state"] == "completed"
    assert row["vehicle"]["id"] == vehicle.vehicle_id
    assert {"queued", "dispatched", "accepted", "in_progress", "completed"} <= set(row["state_timestamps"])


def _state(stack, mission_id: str) -> str:
    return rows(stack.database_url, "SELECT state FROM missions WHERE id = %s", (mission_id,))[0]["state"]
