"""Mission control an operator can rely on: dispatch gating, a cancel re-sent until the vehicle confirms (and
idempotent), pause and resume, a queued mission's priority, the retry policy, and what revoking or decommissioning
a vehicle does to its missions. Real MQTT vehicles (tests/support/vehicle.py), the real api and worker."""
from __future__ import annotations

from fleetcore import topics
from tests.support.database import rows
from tests.support.waiting import wait_until

WAYPOINTS = [{"lat": 48.1371, "lon": 11.5754}, {"lat": 48.1402, "lon": 11.5601}]


def create(client, vehicle_id: str, **extra) -> dict:
    response = client.post("/api/v1/missions", json={"vehicle_id": vehicle_id, "name": "job", "waypoints": WAYPOINTS,
                                                      **extra})
    assert response.status_code == 201, response.text
    return response.json()


def get(client, mission_id: str) -> dict:
    return client.get(f"/api/v1/missions/{mission_id}").json()


def running(operator, vehicle) -> dict:
    """A mission the vehicle accepted."""
    mission = create(operator, vehicle.vehicle_id)
    assert vehicle.wait_for_command("mission.dispatch")["data"]["mission_id"] == mission["id"]
    vehicle.mission_event(mission["id"], "accepted")
    wait_until(lambda: get(operator, mission["id"])["state"] == "accepted")
    return mission


def test_no_mission_goes_to_a_vehicle_in_manual_or_service_mode_or_fatal(operator, enroll):
    vehicle = enroll()
    for report, reason in (({"mode": "MANUAL"}, "mode_manual"), ({"mode": "SERVICE"}, "mode_service"),
                           ({"mode": "AUTO", "errors": [{"code": "DRIVE", "level": "FATAL"}]}, "health_fatal")):
        vehicle.publish(topics.Kind.STATUS, {"estop": False, "errors": [], **report})
        wait_until(lambda r=report: operator.get(f"/api/v1/vehicles/{vehicle.vehicle_id}").json()["health"]["mode"]
                   == r["mode"] and (r.get("errors") is None) == (operator.get(
                       f"/api/v1/vehicles/{vehicle.vehicle_id}").json()["health"]["health"] != "FATAL"))
        mission = create(operator, vehicle.vehicle_id)
        assert (mission["state"], mission["blocked_reason"]) == ("queued", reason)
        listed = operator.get("/api/v1/missions", params={"vehicle_id": vehicle.vehicle_id, "state": "queued"}).json()
        assert {m["blocked_reason"] for m in listed["items"]} == {reason}
        operator.post(f"/api/v1/missions/{mission['id']}/cancel")
    vehicle.publish(topics.Kind.STATUS, {"mode": "AUTO", "estop": False, "errors": []})
    mission = wait_until(lambda: (m := create(operator, vehicle.vehicle_id))["state"] == "dispatched" and m,
                         message="a vehicle back in AUTO without errors gets missions")
    assert vehicle.wait_for_command("mission.dispatch")["data"]["mission_id"] == mission["id"]


def test_a_battery_below_the_fleets_threshold_holds_the_mission_until_it_charges(operator, admin, enroll):
    vehicle = enroll()
    patched = admin.patch(f"/api/v1/fleets/{operator.fleet}", json={"dispatch_min_battery_pct": 30})
    assert patched.status_code == 200 and patched.json()["dispatch_min_battery_pct"] == 30
    vehicle.telemetry(battery_pct=22.0)
    wait_until(lambda: operator.get(f"/api/v1/vehicles/{vehicle.vehicle_id}").json()["telemetry"]["battery_pct"]
               == 22.0)
    mission = create(operator, vehicle.vehicle_id)
    assert (mission["state"], mission["blocked_reason"]) == ("queued", "battery_low")
    vehicle.telemetry(battery_pct=35.0)
    assert vehicle.wait_for_command("mission.dispatch", timeout=10)["data"]["mission_id"] == mission["id"]
    assert get(operator, mission["id"])["blocked_reason"] is None


def test_an_unconfirmed_cancel_is_sent_again_until_the_vehicle_confirms(operator, enroll):
    vehicle = enroll()
    mission = running(operator, vehicle)
    answer = operator.post(f"/api/v1/missions/{mission['id']}/cancel", json={"reason": "blocked aisle"})
    assert answer.status_code == 200 and answer.json()["state"] == "cancel_requested"
    assert answer.json()["pending_command"] == "cancel"
    first = vehicle.wait_for_command("mission.cancel")
    second = vehicle.wait_for_command("mission.cancel", timeout=10)
    assert first["msg_id"] != second["msg_id"]
    assert first["data"] == second["data"] == {"mission_id": mission["id"], "reason": "blocked aisle"}
    repeated = operator.post(f"/api/v1/missions/{mission['id']}/cancel")
    assert repeated.status_code == 200 and repeated.json()["state"] == "cancel_requested", "idempotent"
    vehicle.mission_event(mission["id"], "cancelled", reason="operator")
    wait_until(lambda: get(operator, mission["id"])["state"] == "cancelled")
    done = operator.post(f"/api/v1/missions/{mission['id']}/cancel")
    assert done.status_code == 200 and done.json()["state"] == "cancelled" and done.json()["pending_command"] is None
    assert [e["event"] for e in done.json()["timeline"]].count("cancel") == 1, "the repeats changed nothing"


def test_a_cancel_that_lost_the_race_to_completion_answers_the_current_state(operator, enroll):
    vehicle = enroll()
    mission = running(operator, vehicle)
    operator.post(f"/api/v1/missions/{mission['id']}/cancel")
    vehicle.mission_event(mission["id"], "completed")
    wait_until(lambda: get(operator, mission["id"])["state"] == "completed")
    again = operator.post(f"/api/v1/missions/{mission['id']}/cancel")
    assert again.status_code == 200 and again.json()["state"] == "completed"
    other = running(operator, vehicle)
    vehicle.mission_event(other["id"], "completed")
    wait_until(lambda: get(operator, other["id"])["state"] == "completed")
    assert operator.post(f"/api/v1/missions/{other['id']}/cancel").status_code == 409, "never asked: a conflict"


def test_pause_and_resume_a_running_mission(operator, enroll):
    vehicle = enroll()
    mission = running(operator, vehicle)
    paused = operator.post(f"/api/v1/missions/{mission['id']}/pause", json={"reason": "crossing"})
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    assert vehicle.wait_for_command("mission.pause")["data"] == {"mission_id": mission["id"], "reason": "crossing"}
    assert vehicle.wait_for_command("mission.pause", timeout=10), "sent again until confirmed"
    vehicle.mission_event(mission["id"], "paused")
    wait_until(lambda: get(operator, mission["id"])["pending_command"] is None, message="the pause is confirmed")
    assert operator.post(f"/api/v1/missions/{mission['id']}/pause").json()["state"] == "paused", "idempotent"

    resumed = operator.post(f"/api/v1/missions/{mission['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["state"] == "in_progress"
    vehicle.wait_for_command("mission.resume")
    vehicle.mission_event(mission["id"], "resumed")
    wait_until(lambda: get(operator, mission["id"])["pending_command"] is None, message="the resume is confirmed")
    timeline = [(e["event"], e["from_state"], e["to_state"], e["actor_type"]) for e in get(operator, mission["id"])
                ["timeline"]][3:]
    assert timeline == [("pause", "accepted", "paused", "operator"), ("paused", "paused", "paused", "vehicle"),
                        ("resume", "paused", "in_progress", "operator"),
                        ("resumed", "in_progress", "in_progress", "vehicle")]
    assert operator.post(f"/api/v1/missions/{mission['id']}/resume").status_code == 200, "a repeat is idempotent"
    queued = create(operator, vehicle.vehicle_id)
    assert operator.post(f"/api/v1/missions/{queued['id']}/pause").status_code == 409, "only a running mission"


def test_a_paused_mission_does_not_time_out(operator, enroll, stack):
    paused_vehicle, running_vehicle = enroll(), enroll()
    paused = running(operator, paused_vehicle)
    other = running(operator, running_vehicle)
    operator.post(f"/api/v1/missions/{paused['id']}/pause")
    # both silent for an hour: the sweep times out the running one, and must leave the paused one alone
    rows(stack.database_url, "UPDATE missions SET timeout_s = 60, last_event_at = now() - interval '1 hour' "
                             "WHERE id = ANY(%s::uuid[]) RETURNING id", ([paused["id"], other["id"]],))
    wait_until(lambda: get(operator, other["id"])["state"] == "timed_out", 15, message="the sweep ran")
    assert get(operator, paused["id"])["state"] == "paused"


def test_the_priority_of_a_queued_mission_changes_and_is_in_the_timeline(operator, enroll):
    vehicle = enroll(connect=False)
    low = create(operator, vehicle.vehicle_id, priority=1)
    high = create(operator, vehicle.vehicle_id, priority=5)
    changed = operator.patch(f"/api/v1/missions/{low['id']}", json={"priority": 9})
    assert changed.status_code == 200 and changed.json()["priority"] == 9
    [entry] = [e for e in changed.json()["timeline"] if e["event"] == "reprioritize"]
    assert entry["detail"] == {"from": 1, "to": 9} and entry["actor_id"] == operator.username
    vehicle.connect(vehicle.secret)
    vehicle.subscribe_commands()
    assert vehicle.wait_for_command("mission.dispatch", timeout=15)["data"]["mission_id"] == low["id"]
    late = operator.patch(f"/api/v1/missions/{low['id']}", json={"priority": 0})
    assert late.status_code == 409, "it left the queue"
    assert operator.patch(f"/api/v1/missions/{high['id']}", json={"priority": 500}).status_code == 422


def test_a_retried_mission_is_requeued_and_every_attempt_is_visible(operator, enroll):
    vehicle = enroll()
    mission = create(operator, vehicle.vehicle_id, max_attempts=3, retry_on=["rejected", "failed"])
    assert (mission["max_attempts"], mission["attempt"]) == (3, 1)
    vehicle.wait_for_command("mission.dispatch")
    vehicle.mission_event(mission["id"], "rejected", reason="busy")
    wait_until(lambda: get(operator, mission["id"])["attempt"] == 2, message="re-queued as attempt 2")
    assert get(operator, mission["id"])["state"] in ("queued", "dispatched")
    assert vehicle.wait_for_command("mission.dispatch", timeout=15)["data"]["mission_id"] == mission["id"]
    vehicle.mission_event(mission["id"], "accepted")
    vehicle.mission_event(mission["id"], "failed", reason="motor")
    wait_until(lambda: get(operator, mission["id"])["attempt"] == 3)
    assert vehicle.wait_for_command("mission.dispatch", timeout=15)["data"]["mission_id"] == mission["id"]
    vehicle.mission_event(mission["id"], "accepted")
    vehicle.mission_event(mission["id"], "completed")
    wait_until(lambda: get(operator, mission["id"])["state"] == "completed")

    detail = get(operator, mission["id"])
    retries = [e for e in detail["timeline"] if e["event"] == "retry"]
    assert [(e["from_state"], e["to_state"], e["attempt"], e["detail"]["next_attempt"]) for e in retries] == \
        [("rejected", "queued", 1, 2), ("failed", "queued", 2, 3)]
    report = operator.get("/api/v1/reports/missions", params={"vehicle_id": vehicle.vehicle_id}).json()
    [row] = report["missions"]
    assert [(a["attempt"], a["outcome"], a["reason"]) for a in row["attempts"]] == \
        [(1, "rejected", "busy"), (2, "failed", "motor"), (3, "completed", None)]
    assert all(a["dispatched_at"] for a in row["attempts"])
    assert row["state"] == "completed" and row["attempt"] == 3


def test_an_outcome_not_in_retry_on_and_the_last_attempt_are_final(operator, enroll):
    vehicle = enroll()
    once = create(operator, vehicle.vehicle_id, max_attempts=2, retry_on=["failed"])
    vehicle.wait_for_command("mission.dispatch")
    vehicle.mission_event(once["id"], "rejected", reason="no")
    wait_until(lambda: get(operator, once["id"])["state"] == "rejected")
    assert get(operator, once["id"])["attempt"] == 1
    bad = operator.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "x",
                                                   "waypoints": WAYPOINTS, "retry_on": ["cancelled"]})
    assert bad.status_code == 422


def test_revoking_a_vehicle_fails_its_active_missions_with_that_reason(operator, enroll):
    vehicle = enroll()
    active = running(operator, vehicle)
    queued = create(operator, vehicle.vehicle_id)
    response = operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/revoke", json={"reason": "stolen"})
    assert response.status_code == 200, response.text
    failed = get(operator, active["id"])
    assert (failed["state"], failed["failure_reason"]) == ("failed", "vehicle_revoked")
    assert failed["timeline"][-1]["event"] == "abort" and failed["timeline"][-1]["actor_id"] == operator.username
    waiting = get(operator, queued["id"])
    assert (waiting["state"], waiting["blocked_reason"]) == ("queued", "vehicle_revoked")


def test_decommissioning_a_busy_vehicle_fails_its_mission_and_cancels_the_queue(operator, enroll):
    vehicle = enroll()
    active = running(operator, vehicle)
    queued = create(operator, vehicle.vehicle_id)
    response = operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/decommission", json={"reason": "scrapped"})
    assert response.status_code == 200, response.text
    assert (get(operator, active["id"])["state"], get(operator, active["id"])["failure_reason"]) == \
        ("failed", "vehicle_decommissioned")
    assert (get(operator, queued["id"])["state"], get(operator, queued["id"])["failure_reason"]) == \
        ("cancelled", "vehicle_decommissioned")
