"""Emergency stop as a state: stored and audited before the publish, sent to every vehicle it applies to until
each confirms (status ``estop: true``), at once to a vehicle that connects later; scopes vehicle / fleet / all;
a release ends exactly its own scope; dispatch never sends a mission to a stopped vehicle.

Vehicles here are real MQTT clients (tests/support/vehicle.py) that do only what the test says: they confirm a
stop by publishing the status a vehicle would.
"""
from __future__ import annotations

import psycopg2
import pytest

from fleetcore import topics
from tests.support.waiting import wait_until

WAYPOINTS = [{"lat": 48.1371, "lon": 11.5754}]


def status(vehicle, *, estop: bool, mode: str | None = None, **extra) -> None:
    vehicle.publish(topics.Kind.STATUS, {"mode": mode or ("ESTOP" if estop else "AUTO"), "estop": estop,
                                         "errors": [], **extra})


def stop_detail(client, stop_id: int) -> dict:
    response = client.get(f"/api/v1/emergency-stops/{stop_id}")
    assert response.status_code == 200, response.text
    return response.json()


def audit_rows(stack, target_id: str) -> list[tuple]:
    with psycopg2.connect(stack.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT action, actor_id, detail ->> 'stop_id' FROM audit_log WHERE target_id = %s "
                    "AND action LIKE 'emergency.%%' ORDER BY id", (target_id,))
        return cur.fetchall()


def test_a_stop_is_stored_and_audited_before_the_publish_and_reaches_a_vehicle_that_connects_later(operator, enroll,
                                                                                                  stack):
    vehicle = enroll(connect=False)
    response = operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-stop", json={"reason": "pedestrian"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changed"] is True and body["delivered"] is False and body["vehicles"] == 1, "offline: not sent yet"
    stop = body["stop"]
    assert (stop["scope"], stop["vehicle_id"], stop["reason"], stop["set_by"], stop["released_at"]) == \
        ("vehicle", vehicle.vehicle_id, "pedestrian", operator.username, None)
    assert audit_rows(stack, vehicle.vehicle_id) == [("emergency.stop", operator.username, str(stop["id"]))]
    listed = operator.get("/api/v1/emergency-stops").json()["items"]
    assert [(s["id"], s["set_by"], s["acknowledged"]) for s in listed if s["vehicle_id"] == vehicle.vehicle_id] == \
        [(stop["id"], operator.username, 0)]

    vehicle.connect(vehicle.secret)
    vehicle.subscribe_commands()
    first = vehicle.wait_for_command("emergency.stop", timeout=5)
    assert first["data"] == {"reason": "pedestrian", "issued_by": operator.username, "stop_id": stop["id"],
                             "scope": "vehicle"}
    again = vehicle.wait_for_command("emergency.stop", timeout=10)
    assert again["msg_id"] != first["msg_id"], "sent again while not confirmed"
    status(vehicle, estop=True)
    detail = wait_until(lambda: (d := stop_detail(operator, stop["id"]))["acknowledged"] == 1 and d,
                        message="the status report acknowledges the stop")
    [command] = detail["commands"]
    assert command["vehicle_id"] == vehicle.vehicle_id and command["command"] == "stop"
    assert command["acknowledged_at"] and command["sends"] >= 2 and command["last_delivered"] is True


def test_dispatch_never_sends_a_mission_to_a_stopped_vehicle_and_sends_it_after_the_release(operator, enroll, stack):
    vehicle = enroll()
    operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-stop", json={"reason": "inspection"})
    vehicle.wait_for_command("emergency.stop")
    created = operator.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "held",
                                                       "waypoints": WAYPOINTS})
    assert created.status_code == 201, created.text
    mission = created.json()
    assert (mission["state"], mission["blocked_reason"]) == ("queued", "emergency_stop")

    released = operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-release", json={"reason": "done"})
    assert released.status_code == 200 and released.json()["still_stopped_by"] == []
    release = vehicle.wait_for_command("emergency.release")
    assert release["data"]["reason"] == "done" and release["data"]["issued_by"] == operator.username
    dispatch = vehicle.wait_for_command("mission.dispatch", timeout=10)
    assert dispatch["data"]["mission_id"] == mission["id"]
    assert [action for action, _, _ in audit_rows(stack, vehicle.vehicle_id)] == \
        ["emergency.stop", "emergency.release"]
    again = operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-release")
    assert again.status_code == 409 and again.json()["code"] == "no_active_stop"


def test_a_vehicle_that_reports_itself_stopped_gets_no_mission(operator, enroll):
    vehicle = enroll()
    status(vehicle, estop=True)
    wait_until(lambda: operator.get(f"/api/v1/vehicles/{vehicle.vehicle_id}").json()["health"]["estop"] is True)
    mission = operator.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "held",
                                                       "waypoints": WAYPOINTS}).json()
    assert (mission["state"], mission["blocked_reason"]) == ("queued", "vehicle_estop")
    status(vehicle, estop=False)
    assert vehicle.wait_for_command("mission.dispatch", timeout=10)["data"]["mission_id"] == mission["id"]


def test_a_fleet_stop_holds_every_vehicle_of_the_fleet_and_a_vehicle_release_does_not_undo_it(operator, enroll):
    first, second = enroll(), enroll()
    fleet_stop = operator.post(f"/api/v1/fleets/{operator.fleet}/emergency-stop", json={"reason": "fire drill"})
    assert fleet_stop.status_code == 200, fleet_stop.text
    assert sorted(fleet_stop.json()["delivered_to"]) == sorted([first.vehicle_id, second.vehicle_id])
    for vehicle in (first, second):
        assert vehicle.wait_for_command("emergency.stop")["data"]["scope"] == "fleet"
    own = operator.post(f"/api/v1/vehicles/{first.vehicle_id}/emergency-stop", json={"reason": "and this one"})
    own_stop = own.json()["stop"]

    released = operator.post(f"/api/v1/vehicles/{first.vehicle_id}/emergency-release", json={"reason": "fixed"})
    assert released.status_code == 200, released.text
    body = released.json()
    assert body["stop"]["id"] == own_stop["id"] and body["stop"]["released_by"] == operator.username
    assert [s["id"] for s in body["still_stopped_by"]] == [fleet_stop.json()["stop"]["id"]]
    assert body["vehicles"] == 0 and body["delivered_to"] == [], "no release sent: the fleet stop still applies"
    mission = operator.post("/api/v1/missions", json={"vehicle_id": first.vehicle_id, "name": "held",
                                                       "waypoints": WAYPOINTS}).json()
    assert mission["blocked_reason"] == "emergency_stop"

    fleet_release = operator.post(f"/api/v1/fleets/{operator.fleet}/emergency-release", json={"reason": "over"})
    assert fleet_release.status_code == 200
    assert sorted(fleet_release.json()["delivered_to"]) == sorted([first.vehicle_id, second.vehicle_id])
    assert first.wait_for_command("emergency.release")["data"]["scope"] == "fleet"
    assert first.wait_for_command("mission.dispatch", timeout=10)["data"]["mission_id"] == mission["id"]


def test_an_operators_vehicle_release_never_undoes_an_admins_all_fleets_stop(operator, admin, enroll):
    vehicle = enroll()
    everything = admin.post("/api/v1/emergency-stop", json={"reason": "site alarm"})
    try:
        assert everything.status_code == 200, everything.text
        stop = everything.json()["stop"]
        assert stop["scope"] == "all" and stop["set_by"] == "admin"
        vehicle.wait_for_command("emergency.stop")
        refused = operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-release", json={"reason": "mine"})
        assert refused.status_code == 409 and refused.json()["code"] == "no_active_stop"
        assert operator.post("/api/v1/emergency-release", json={"reason": "mine"}).status_code == 403
        commands = [c for c in stop_detail(admin, stop["id"])["commands"] if c["vehicle_id"] == vehicle.vehicle_id]
        assert [c["command"] for c in commands] == ["stop"]
        assert any(s["id"] == stop["id"] for s in operator.get("/api/v1/emergency-stops").json()["items"]), \
            "an all-fleets stop is shown to everyone it holds"
    finally:
        assert admin.post("/api/v1/emergency-release", json={"reason": "all clear"}).status_code == 200
    vehicle.wait_for_command("emergency.release")


def test_a_repeated_stop_answers_the_stop_already_set(operator, enroll, stack):
    vehicle = enroll()
    first = operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-stop", json={"reason": "one"}).json()
    second = operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-stop", json={"reason": "two"}).json()
    assert second["changed"] is False and second["stop"]["id"] == first["stop"]["id"]
    assert second["stop"]["reason"] == "one"
    assert len(audit_rows(stack, vehicle.vehicle_id)) == 1


@pytest.mark.parametrize("path", ["/api/v1/fleets/{fleet}/emergency-stop", "/api/v1/fleets/{fleet}/emergency-release",
                                  "/api/v1/vehicles/{vehicle}/emergency-stop"])
def test_stops_are_scoped_to_fleets_and_roles(operator, make_user, enroll, path):
    vehicle = enroll(connect=False)
    target = path.format(fleet=operator.fleet, vehicle=vehicle.vehicle_id)
    outsider = make_user("operator", [])
    assert outsider.post(target, json={"reason": "not mine"}).status_code == 404
    viewer = make_user("viewer", [operator.fleet])
    assert viewer.post(target, json={"reason": "not allowed"}).status_code == 403
    assert operator.post("/api/v1/emergency-stop", json={"reason": "not allowed"}).status_code == 403


def test_stops_are_listed_only_to_those_who_see_their_fleet(operator, make_user, enroll):
    vehicle = enroll(connect=False)
    stop = operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-stop", json={"reason": "x"}).json()["stop"]
    outsider = make_user("viewer", [])
    assert stop["id"] not in [s["id"] for s in outsider.get("/api/v1/emergency-stops").json()["items"]]
    assert outsider.get(f"/api/v1/emergency-stops/{stop['id']}").status_code == 404
    operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-release")
    active = operator.get("/api/v1/emergency-stops").json()["items"]
    assert stop["id"] not in [s["id"] for s in active], "released: no longer active"
    history = operator.get("/api/v1/emergency-stops", params={"active": "false"}).json()["items"]
    [released] = [s for s in history if s["id"] == stop["id"]]
    assert released["released_by"] == operator.username


def test_a_stop_of_an_unknown_fleet_is_a_404_even_for_an_admin(admin):
    response = admin.post("/api/v1/fleets/no-such-fleet-here/emergency-stop", json={"reason": "x"})
    assert response.status_code == 404 and response.json()["code"] == "not_found"
