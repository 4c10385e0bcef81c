"""The mission lifecycle as operators and vehicles meet it: REST in, MQTT out and back, database and report.

Each test creates its own fleet, operator and vehicles; the vehicles are real paho clients registered over MQTT.
"""
from __future__ import annotations

import uuid

from fleetcore import topics
from tests.support.waiting import wait_until

WAYPOINTS = [{"lat": 48.1371, "lon": 11.5754}, {"lat": 48.1402, "lon": 11.5601, "name": "depot"}]


def mission_state(client, mission_id: str) -> str:
    return client.get(f"/api/v1/missions/{mission_id}").json()["state"]


def create_mission(client, vehicle_id: str, **extra):
    body = {"vehicle_id": vehicle_id, "name": "deliver parcel", "waypoints": WAYPOINTS, **extra}
    response = client.post("/api/v1/missions", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_full_lifecycle_dispatch_accept_progress_complete(operator, enroll):
    vehicle = enroll()
    mission = create_mission(operator, vehicle.vehicle_id, priority=5)
    assert mission["state"] == "dispatched"

    command = vehicle.wait_for_command("mission.dispatch")
    assert command["data"]["mission_id"] == mission["id"]
    assert command["data"]["waypoints"][1]["name"] == "depot"

    vehicle.mission_event(mission["id"], "accepted")
    vehicle.mission_event(mission["id"], "progress", progress={"percent": 50, "step": "en route", "eta_s": 30})
    wait_until(lambda: mission_state(operator, mission["id"]) == "in_progress")
    vehicle.mission_event(mission["id"], "completed")
    wait_until(lambda: mission_state(operator, mission["id"]) == "completed")

    detail = operator.get(f"/api/v1/missions/{mission['id']}").json()
    transitions = [(e["event"], e["from_state"], e["to_state"]) for e in detail["timeline"]]
    assert transitions == [("created", None, "queued"), ("dispatch", "queued", "dispatched"),
                           ("accepted", "dispatched", "accepted"), ("progress", "accepted", "in_progress"),
                           ("completed", "in_progress", "completed")]
    vehicle_events = [e for e in detail["timeline"] if e["actor_type"] == "vehicle"]
    assert all(e["device_time"] and e["server_time"] for e in vehicle_events)
    assert detail["progress"] == {"percent": 100, "step": "completed", "eta_s": 0}, "done: nothing left"
    assert detail["finished_at"] and detail["accepted_at"] and detail["dispatched_at"]

    report = operator.get("/api/v1/reports/missions", params={"vehicle_id": vehicle.vehicle_id}).json()
    assert report["summary"]["by_state"] == {"completed": 1}
    row = report["missions"][0]
    assert row["vehicle"]["id"] == vehicle.vehicle_id and row["vehicle"]["fleet_id"] == operator.fleet
    assert set(row["state_timestamps"]) >= {"queued", "dispatched", "accepted", "in_progress", "completed"}
    assert row["durations"]["total_s"] >= row["durations"]["execution_s"] >= 0


def test_offline_vehicle_gets_its_missions_by_priority_when_it_connects(operator, enroll):
    vehicle = enroll(connect=False)
    low = create_mission(operator, vehicle.vehicle_id, name="low", priority=1)
    high = create_mission(operator, vehicle.vehicle_id, name="high", priority=9)
    assert low["state"] == high["state"] == "queued"

    vehicle.connect(vehicle.secret)
    vehicle.subscribe_commands()
    first = vehicle.wait_for_command("mission.dispatch", timeout=15)
    assert first["data"]["mission_id"] == high["id"], "higher priority first"
    assert mission_state(operator, low["id"]) == "queued", "one mission at a time"

    vehicle.mission_event(high["id"], "accepted")
    vehicle.mission_event(high["id"], "completed")
    second = vehicle.wait_for_command("mission.dispatch", timeout=15)
    assert second["data"]["mission_id"] == low["id"]


def test_a_mission_waiting_after_no_subscriber_is_not_overtaken_by_a_lower_priority_one(operator, enroll):
    vehicle = enroll(connect=False)
    vehicle.connect(vehicle.secret)  # online, but not yet subscribed to its commands
    wait_until(lambda: operator.get(f"/api/v1/vehicles/{vehicle.vehicle_id}").json()["presence"]["online"])
    high = create_mission(operator, vehicle.vehicle_id, name="high", priority=9)
    assert high["state"] == "queued" and high["dispatch_attempts"] == 1, "no subscriber: back to the queue"
    vehicle.subscribe_commands()
    low = create_mission(operator, vehicle.vehicle_id, name="low", priority=1)
    assert low["state"] == "queued", "the queue waits for its head"
    first = vehicle.wait_for_command("mission.dispatch", timeout=15)
    assert first["data"]["mission_id"] == high["id"]
    assert mission_state(operator, low["id"]) == "queued"


def test_cancel_a_queued_mission_is_immediate(operator, enroll):
    vehicle = enroll(connect=False)
    mission = create_mission(operator, vehicle.vehicle_id)
    response = operator.post(f"/api/v1/missions/{mission['id']}/cancel", json={"reason": "not needed"})
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    again = operator.post(f"/api/v1/missions/{mission['id']}/cancel")
    assert again.status_code == 200 and again.json()["state"] == "cancelled", "a repeated cancel is idempotent"


def test_cancel_a_running_mission_is_confirmed_by_the_vehicle(operator, enroll):
    vehicle = enroll()
    mission = create_mission(operator, vehicle.vehicle_id)
    vehicle.wait_for_command("mission.dispatch")
    vehicle.mission_event(mission["id"], "accepted")
    wait_until(lambda: mission_state(operator, mission["id"]) == "accepted")

    response = operator.post(f"/api/v1/missions/{mission['id']}/cancel", json={"reason": "road closed"})
    assert response.json()["state"] == "cancel_requested"
    cancel = vehicle.wait_for_command("mission.cancel")
    assert cancel["data"] == {"mission_id": mission["id"], "reason": "road closed"}
    vehicle.mission_event(mission["id"], "cancelled", reason="operator request")
    wait_until(lambda: mission_state(operator, mission["id"]) == "cancelled")


def test_a_rejected_mission_records_the_reason(operator, enroll):
    vehicle = enroll()
    mission = create_mission(operator, vehicle.vehicle_id)
    vehicle.wait_for_command("mission.dispatch")
    vehicle.mission_event(mission["id"], "rejected", reason="low_battery")
    wait_until(lambda: mission_state(operator, mission["id"]) == "rejected")
    assert operator.get(f"/api/v1/missions/{mission['id']}").json()["failure_reason"] == "low_battery"


def test_a_silent_vehicle_times_out_the_mission(operator, enroll):
    vehicle = enroll()
    mission = create_mission(operator, vehicle.vehicle_id, timeout_s=1)
    vehicle.wait_for_command("mission.dispatch")
    wait_until(lambda: mission_state(operator, mission["id"]) == "timed_out", timeout=15)


def test_a_queued_mission_expires_after_its_ttl(operator, enroll):
    vehicle = enroll(connect=False)
    mission = create_mission(operator, vehicle.vehicle_id, ttl_s=1)
    wait_until(lambda: mission_state(operator, mission["id"]) == "expired", timeout=15)


def test_idempotency_key_makes_retries_safe(operator, enroll):
    vehicle = enroll(connect=False)
    key = str(uuid.uuid4())
    body = {"vehicle_id": vehicle.vehicle_id, "name": "once", "waypoints": WAYPOINTS}
    first = operator.post("/api/v1/missions", json=body, headers={"Idempotency-Key": key})
    again = operator.post("/api/v1/missions", json=body, headers={"Idempotency-Key": key})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = operator.post("/api/v1/missions", json={**body, "name": "different"}, headers={"Idempotency-Key": key})
    assert other.status_code == 409
    listed = operator.get("/api/v1/missions", params={"vehicle_id": vehicle.vehicle_id}).json()
    assert listed["page"]["total"] == 1


def test_vehicle_events_out_of_order_or_for_others_change_nothing(operator, enroll, stack):
    owner, intruder = enroll(), enroll()
    mission = create_mission(operator, owner.vehicle_id)
    owner.wait_for_command("mission.dispatch")
    owner.mission_event(mission["id"], "completed")             # not accepted yet: invalid transition
    intruder.mission_event(mission["id"], "accepted")           # not its mission
    import psycopg2
    conn = psycopg2.connect(stack.database_url)
    conn.autocommit = True

    def reasons():
        with conn.cursor() as cur:
            cur.execute("SELECT clientid, reason FROM rejected_messages WHERE clientid = ANY(%s)",
                        ([owner.vehicle_id, intruder.vehicle_id],))
            return sorted(cur.fetchall())
    rejected = wait_until(lambda: len(reasons()) == 2 and reasons())
    conn.close()
    assert {r[0] for r in rejected} == {owner.vehicle_id, intruder.vehicle_id}
    assert mission_state(operator, mission["id"]) == "dispatched"


def test_missions_are_scoped_to_fleets_and_roles(operator, enroll, make_user):
    vehicle = enroll(connect=False)
    mission = create_mission(operator, vehicle.vehicle_id)
    outsider = make_user("operator", [])
    assert outsider.get(f"/api/v1/missions/{mission['id']}").status_code == 404
    assert outsider.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "x",
                                                    "waypoints": WAYPOINTS}).status_code == 404
    viewer = make_user("viewer", [operator.fleet])
    assert viewer.get(f"/api/v1/missions/{mission['id']}").status_code == 200
    assert viewer.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "x",
                                                  "waypoints": WAYPOINTS}).status_code == 403


def test_mission_input_is_validated(operator, enroll):
    vehicle = enroll(connect=False)
    response = operator.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "x",
                                                        "waypoints": [{"lat": 91, "lon": 0}], "priority": 1000})
    assert response.status_code == 422
    fields = response.json()["details"]["fields"]["json"]
    assert "waypoints" in fields and "priority" in fields
    nothing = operator.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "x"})
    assert nothing.status_code == 422


def test_emergency_stop_reaches_the_vehicle_and_is_audited(operator, enroll, stack):
    vehicle = enroll()
    response = operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-stop", json={"reason": "pedestrian"})
    assert response.status_code == 200 and response.json()["delivered"] is True
    command = vehicle.wait_for_command("emergency.stop")
    assert command["data"]["reason"] == "pedestrian"
    assert operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-release").json()["delivered"]
    vehicle.wait_for_command("emergency.release")
    import psycopg2
    with psycopg2.connect(stack.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT action, actor_id FROM audit_log WHERE target_id = %s ORDER BY id", (vehicle.vehicle_id,))
        actions = [row[0] for row in cur.fetchall()]
    assert "emergency.stop" in actions and "emergency.release" in actions


def test_fleet_wide_emergency_stop_is_admin_only(operator, admin, enroll):
    vehicle = enroll()
    assert operator.post("/api/v1/emergency-stop", json={"reason": "drill"}).status_code == 403
    assert admin.post("/api/v1/emergency-stop", json={"reason": "drill"}).status_code == 200
    command = vehicle.wait_for_message(lambda m: m.topic == topics.fleet_command_topic()).json()
    assert command["type"] == "emergency.stop"
    assert admin.post("/api/v1/emergency-release", json={"reason": "drill over"}).status_code == 200
