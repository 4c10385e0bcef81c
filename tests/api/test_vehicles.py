"""Vehicles through the operator API: create with an enrollment token, list/filter/scope, edit, re-enroll,
desired configuration, revoke and decommission — checked against authsvc (the broker's view of credentials)
and the database.

Runs with FLEET_STACK_COMPONENTS=authsvc,api. Without a broker the commands and kicks cannot be sent: the api
then answers 503 *after* storing the change (the request may be repeated); with a broker those calls answer 200.
"""
from __future__ import annotations

import uuid

import pytest

from fleetcore import credentials
from fleetcore.db import Database
from tests.api.conftest import unique
from tests.authsvc.conftest import AuthsvcClient, registration_summary
from tests.support.required import require_components


@pytest.fixture(scope="module")
def broker_running(stack) -> bool:
    return "broker" in {c.name for c in stack.started}


@pytest.fixture(scope="module")
def authsvc(stack) -> AuthsvcClient:
    require_components(stack, "authsvc")
    return AuthsvcClient(stack.url("authsvc"), stack.secrets["FLEET_BROKER_TOKEN"])


@pytest.fixture(scope="module")
def stack_db(stack):
    database = Database(stack.database_url, max_connections=2, application_name="tests-api-vehicles")
    yield database
    database.close()


def create(client, fleet: str, **extra) -> dict:
    vehicle_id = extra.pop("id", None) or unique("veh")
    response = client.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": fleet, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def register(authsvc, stack, vehicle_id: str, token: str, broker_running: bool) -> str:
    """Register over authsvc's registration endpoint; return the device secret it issued."""
    msg_id = str(uuid.uuid4())
    summary = registration_summary(authsvc.register(vehicle_id, token, msg_id), broker_running)
    assert summary["result"] == "accepted", summary
    return credentials.derive_device_secret(stack.secrets["FLEET_DEVICE_SECRET_KEY"], vehicle_id, msg_id, token)


def audit_actions(stack_db, vehicle_id: str) -> list[tuple[str, str]]:
    with stack_db.transaction() as cur:
        cur.execute("SELECT action, actor_id FROM audit_log WHERE target_type = 'vehicle' AND target_id = %s "
                    "ORDER BY id", (vehicle_id,))
        return [(row["action"], row["actor_id"]) for row in cur.fetchall()]


# -- create -----------------------------------------------------------------------------------------------------
def test_create_returns_the_pending_vehicle_and_a_one_time_token(operator, authsvc, stack_db):
    vehicle_id = unique("veh")
    response = operator.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": operator.fleet, "name": "Rover",
                                                       "model": "r2", "metadata": {"depot": "north"}})
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/api/v1/vehicles/{vehicle_id}"
    body = response.json()
    assert body["vehicle"]["id"] == vehicle_id and body["vehicle"]["status"] == "pending"
    assert body["vehicle"]["metadata"] == {"depot": "north"} and body["vehicle"]["presence"]["online"] is False
    assert body["enrollment"]["token"].startswith("enr_") and body["enrollment"]["expires_at"]
    assert authsvc.authn_enrolling(vehicle_id, body["enrollment"]["token"])["client_attrs"] == \
        {"role": "enrolling", "fleet": operator.fleet}
    assert operator.get(f"/api/v1/vehicles/{vehicle_id}").json().get("enrollment") is None, "shown only once"
    with stack_db.transaction() as cur:
        cur.execute("SELECT token_hash FROM enrollment_tokens WHERE vehicle_id = %s", (vehicle_id,))
        assert body["enrollment"]["token"].encode() not in bytes(cur.fetchone()["token_hash"])
    assert audit_actions(stack_db, vehicle_id) == [("vehicle.create", operator.username)]


def test_create_errors(operator, admin, make_user, fleet):
    existing = create(operator, fleet)["vehicle"]["id"]
    assert operator.post("/api/v1/vehicles", json={"id": existing, "fleet_id": fleet}).status_code == 409
    other_fleet = unique("fleet")
    assert admin.post("/api/v1/fleets", json={"id": other_fleet, "name": "Other"}).status_code == 201
    response = operator.post("/api/v1/vehicles", json={"id": unique("veh"), "fleet_id": other_fleet})
    assert response.status_code == 404, "cannot create in a fleet one cannot see"
    assert admin.post("/api/v1/vehicles", json={"id": unique("veh"), "fleet_id": "no-such-fleet"}).status_code == 404
    for bad in ({"id": "_fleet", "fleet_id": fleet}, {"id": "a/b", "fleet_id": fleet}, {"id": "a+", "fleet_id": fleet},
                {"id": unique("veh"), "fleet_id": fleet, "colour": "red"}, {"fleet_id": fleet}):
        response = operator.post("/api/v1/vehicles", json=bad)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["code"] == "validation_error"
    viewer = make_user("viewer", [fleet])
    assert viewer.post("/api/v1/vehicles", json={"id": unique("veh"), "fleet_id": fleet}).status_code == 403


# -- read -------------------------------------------------------------------------------------------------------
def test_list_filters_sorts_pages_and_scopes(operator, admin, make_user, stack_db):
    ids = sorted(create(operator, operator.fleet)["vehicle"]["id"] for _ in range(3))
    other_fleet = unique("fleet")
    assert admin.post("/api/v1/fleets", json={"id": other_fleet, "name": "Other"}).status_code == 201
    hidden = create(admin, other_fleet)["vehicle"]["id"]
    with stack_db.transaction() as cur:  # positions and modes as the ingest would store them
        for vehicle_id, lat, mode, odometer in zip(ids, (48.0, 48.5, 47.0), ("AUTO", "MANUAL", "AUTO"),
                                                   (1500.0, None, 300.0), strict=True):
            cur.execute("INSERT INTO vehicle_state (vehicle_id, lat, lon, mode, online, odometer_m) "
                        "VALUES (%s, %s, 11.0, %s, %s, %s) "
                        "ON CONFLICT (vehicle_id) DO UPDATE SET lat = excluded.lat, lon = excluded.lon, "
                        "mode = excluded.mode, online = excluded.online, odometer_m = excluded.odometer_m",
                        (vehicle_id, lat, mode, mode == "MANUAL", odometer))

    listed = operator.get("/api/v1/vehicles", params={"per_page": 500}).json()
    assert [v["id"] for v in listed["items"]] == ids and hidden not in str(listed)
    assert operator.get(f"/api/v1/vehicles/{hidden}").status_code == 404
    assert operator.get("/api/v1/vehicles", params={"fleet_id": other_fleet}).json()["items"] == []
    listed = admin.get("/api/v1/vehicles", params={"fleet_id": other_fleet}).json()["items"]
    assert [v["id"] for v in listed] == [hidden]

    assert [v["id"] for v in operator.get("/api/v1/vehicles", params={"sort": "-id"}).json()["items"]] == ids[::-1]
    page = operator.get("/api/v1/vehicles", params={"per_page": 2, "page": 2}).json()
    assert [v["id"] for v in page["items"]] == ids[2:] and page["page"] == {"page": 2, "per_page": 2, "total": 3,
                                                                             "pages": 2}
    assert [v["id"] for v in operator.get("/api/v1/vehicles", params={"mode": "AUTO"}).json()["items"]] == \
        [ids[0], ids[2]]
    assert [v["id"] for v in operator.get("/api/v1/vehicles", params={"online": "true"}).json()["items"]] == [ids[1]]
    assert [v["id"] for v in operator.get("/api/v1/vehicles", params={"status": "pending"}).json()["items"]] == ids
    near = operator.get("/api/v1/vehicles", params={"near": "47.1,11.0"}).json()["items"]
    assert [v["id"] for v in near] == [ids[2], ids[0], ids[1]]
    assert near[0]["distance_m"] < near[1]["distance_m"] < near[2]["distance_m"]

    def order(**params) -> list[str]:
        return [v["id"] for v in operator.get("/api/v1/vehicles", params=params).json()["items"]]
    # Odometer: the vehicle that never reported one comes last in both directions.
    assert order(sort="odometer") == [ids[2], ids[0], ids[1]]
    assert order(sort="-odometer") == [ids[0], ids[2], ids[1]]
    assert [v["telemetry"]["odometer_m"] for v in operator.get("/api/v1/vehicles", params={
        "sort": "-odometer"}).json()["items"]] == [1500.0, 300.0, None]
    assert order(near="47.1,11.0", sort="distance") == [ids[2], ids[0], ids[1]]
    assert order(near="47.1,11.0", sort="-distance") == [ids[1], ids[0], ids[2]]
    by_odometer_near = operator.get("/api/v1/vehicles", params={"near": "47.1,11.0", "sort": "odometer"}).json()
    assert [v["id"] for v in by_odometer_near["items"]] == [ids[2], ids[0], ids[1]]
    assert all(v["distance_m"] > 0 for v in by_odometer_near["items"])
    assert order(sort="-odometer", per_page=1, page=2) == [ids[2]]
    for bad in ({"near": "north"}, {"near": "91,0"}, {"sort": "colour"}, {"status": "flying"}, {"per_page": 0},
                {"sort": "distance"}, {"sort": "odometer_m"}):
        response = operator.get("/api/v1/vehicles", params=bad)
        assert response.status_code == 422 and response.json()["code"] == "validation_error", (bad, response.text)
    assert "sort=distance needs near" in str(operator.get("/api/v1/vehicles", params={"sort": "-distance"}).json())
    unknown = operator.get("/api/v1/vehicles", params={"order": "odometer"})
    assert unknown.status_code == 400 and unknown.json()["code"] == "unknown_parameter"


def test_viewer_reads_but_cannot_change(make_user, operator):
    vehicle_id = create(operator, operator.fleet)["vehicle"]["id"]
    viewer = make_user("viewer", [operator.fleet])
    assert viewer.get(f"/api/v1/vehicles/{vehicle_id}").status_code == 200
    assert viewer.patch(f"/api/v1/vehicles/{vehicle_id}", json={"name": "x"}).status_code == 403
    assert viewer.post(f"/api/v1/vehicles/{vehicle_id}/enrollment").status_code == 403
    assert viewer.post(f"/api/v1/vehicles/{vehicle_id}/revoke").status_code == 403
    assert viewer.post(f"/api/v1/vehicles/{vehicle_id}/decommission").status_code == 403
    assert viewer.put(f"/api/v1/vehicles/{vehicle_id}/config", json={"config": {}}).status_code == 403


def test_patch_changes_details(operator, stack_db):
    vehicle_id = create(operator, operator.fleet, name="old")["vehicle"]["id"]
    response = operator.patch(f"/api/v1/vehicles/{vehicle_id}", json={"name": "new", "metadata": {"k": 1}})
    assert response.status_code == 200
    assert (response.json()["name"], response.json()["metadata"]) == ("new", {"k": 1})
    assert operator.patch(f"/api/v1/vehicles/{vehicle_id}", json={"status": "active"}).status_code == 422
    assert operator.patch("/api/v1/vehicles/no-such-vehicle", json={"name": "x"}).status_code == 404
    assert ("vehicle.update", operator.username) in audit_actions(stack_db, vehicle_id)


# -- credentials ------------------------------------------------------------------------------------------------
def test_new_enrollment_supersedes_the_old_token_and_rotates_the_secret(operator, authsvc, stack, broker_running,
                                                                         stack_db):
    created = create(operator, operator.fleet)
    vehicle_id, first_token = created["vehicle"]["id"], created["enrollment"]["token"]
    response = operator.post(f"/api/v1/vehicles/{vehicle_id}/enrollment")
    assert response.status_code == 201
    second_token = response.json()["token"]
    assert second_token != first_token and response.json()["expires_at"]
    assert authsvc.authn_enrolling(vehicle_id, first_token) == {"result": "deny"}, "superseded"

    first_secret = register(authsvc, stack, vehicle_id, second_token, broker_running)
    vehicle = operator.get(f"/api/v1/vehicles/{vehicle_id}").json()
    assert vehicle["status"] == "active" and vehicle["registered_at"]
    assert authsvc.authn_result(vehicle_id, first_secret)["result"] == "allow"

    third_token = operator.post(f"/api/v1/vehicles/{vehicle_id}/enrollment").json()["token"]
    second_secret = register(authsvc, stack, vehicle_id, third_token, broker_running)
    assert authsvc.authn_result(vehicle_id, first_secret) == {"result": "deny"}, "rotated"
    assert authsvc.authn_result(vehicle_id, second_secret)["client_attrs"]["role"] == "vehicle"
    actions = [a for a, _ in audit_actions(stack_db, vehicle_id)]
    assert actions.count("vehicle.enrollment_token_issue") == 2 and actions.count("vehicle.register") == 2


def test_revoke_stops_the_secret_and_a_new_token_readmits(operator, authsvc, stack, broker_running, stack_db):
    created = create(operator, operator.fleet)
    vehicle_id = created["vehicle"]["id"]
    secret = register(authsvc, stack, vehicle_id, created["enrollment"]["token"], broker_running)
    response = operator.post(f"/api/v1/vehicles/{vehicle_id}/revoke", json={"reason": "stolen"})
    if broker_running:
        assert response.status_code == 200, response.text
        assert response.json()["session"] == "not_connected"
        assert response.json()["vehicle"]["status"] == "revoked"
    else:
        assert response.status_code == 503, response.text
        assert response.json()["details"] == {"status": "revoked"}
    assert authsvc.authn_result(vehicle_id, secret) == {"result": "deny"}
    vehicle = operator.get(f"/api/v1/vehicles/{vehicle_id}").json()
    assert vehicle["status"] == "revoked" and vehicle["revoked_at"]
    assert ("vehicle.revoke", operator.username) in audit_actions(stack_db, vehicle_id)
    with stack_db.transaction() as cur:
        cur.execute("SELECT detail FROM audit_log WHERE target_id = %s AND action = 'vehicle.revoke'", (vehicle_id,))
        assert cur.fetchone()["detail"]["reason"] == "stolen"

    again = operator.post(f"/api/v1/vehicles/{vehicle_id}/revoke")
    assert again.status_code == (200 if broker_running else 503), "idempotent"

    refused = operator.post(f"/api/v1/vehicles/{vehicle_id}/enrollment")
    assert refused.status_code == 409 and refused.json()["code"] == "vehicle_revoked", refused.text
    assert operator.username in refused.json()["message"] and "stolen" in refused.json()["message"]
    token = operator.post(f"/api/v1/vehicles/{vehicle_id}/enrollment", json={"readmit": True}).json()["token"]
    new_secret = register(authsvc, stack, vehicle_id, token, broker_running)
    assert operator.get(f"/api/v1/vehicles/{vehicle_id}").json()["status"] == "active"
    assert authsvc.authn_result(vehicle_id, new_secret)["result"] == "allow"
    assert authsvc.authn_result(vehicle_id, secret) == {"result": "deny"}


def test_decommission_is_final(operator, authsvc, stack, broker_running, stack_db):
    created = create(operator, operator.fleet)
    vehicle_id = created["vehicle"]["id"]
    secret = register(authsvc, stack, vehicle_id, created["enrollment"]["token"], broker_running)
    response = operator.post(f"/api/v1/vehicles/{vehicle_id}/decommission", json={"reason": "scrapped"})
    assert response.status_code == (200 if broker_running else 503), response.text
    vehicle = operator.get(f"/api/v1/vehicles/{vehicle_id}").json()
    assert vehicle["status"] == "decommissioned" and vehicle["decommissioned_at"]
    assert authsvc.authn_result(vehicle_id, secret) == {"result": "deny"}
    assert operator.post(f"/api/v1/vehicles/{vehicle_id}/enrollment").status_code == 409
    assert operator.post(f"/api/v1/vehicles/{vehicle_id}/revoke").status_code == 409
    assert operator.put(f"/api/v1/vehicles/{vehicle_id}/config", json={"config": {"a": 1}}).status_code == 409
    assert ("vehicle.decommission", operator.username) in audit_actions(stack_db, vehicle_id)


def test_decommission_cancels_queued_missions(operator, stack_db):
    vehicle_id = create(operator, operator.fleet)["vehicle"]["id"]
    mission = operator.post("/api/v1/missions", json={"vehicle_id": vehicle_id, "name": "patrol",
                                                      "waypoints": [{"lat": 1, "lon": 2}]})
    assert mission.status_code == 201, mission.text
    assert mission.json()["state"] == "queued"
    operator.post(f"/api/v1/vehicles/{vehicle_id}/decommission")
    assert operator.get(f"/api/v1/missions/{mission.json()['id']}").json()["state"] == "cancelled"


def test_unknown_vehicles_are_404(operator):
    for method, path in (("post", "enrollment"), ("post", "revoke"), ("post", "decommission")):
        assert getattr(operator, method)(f"/api/v1/vehicles/no-such-{uuid.uuid4().hex[:6]}/{path}").status_code == 404
    assert operator.put("/api/v1/vehicles/no-such-vehicle/config", json={"config": {}}).status_code == 404


# -- desired configuration --------------------------------------------------------------------------------------
def test_put_config_stores_the_desired_version_and_sends_it(operator, broker_running):
    vehicle_id = create(operator, operator.fleet)["vehicle"]["id"]
    first = operator.put(f"/api/v1/vehicles/{vehicle_id}/config", json={"config": {"max_speed_mps": 3}})
    if broker_running:
        assert first.status_code == 200, first.text
        assert first.json()["config"]["desired_version"] == 1
        assert first.json()["command"]["command"] == "config.update"
        assert first.json()["command"]["delivered"] is False, "nobody is subscribed"
    else:
        assert first.status_code == 503, first.text
        assert first.json()["details"] == {"desired_version": 1}
    config = operator.get(f"/api/v1/vehicles/{vehicle_id}").json()["config"]
    assert config == {"desired": {"max_speed_mps": 3}, "desired_version": 1, "reported": None,
                      "reported_version": None}
    operator.put(f"/api/v1/vehicles/{vehicle_id}/config", json={"config": {"max_speed_mps": 3}})
    assert operator.get(f"/api/v1/vehicles/{vehicle_id}").json()["config"]["desired_version"] == 1, \
        "repeating the same configuration keeps its version"
    operator.put(f"/api/v1/vehicles/{vehicle_id}/config", json={"config": {"max_speed_mps": 4}})
    assert operator.get(f"/api/v1/vehicles/{vehicle_id}").json()["config"]["desired_version"] == 2
    assert operator.put(f"/api/v1/vehicles/{vehicle_id}/config", json={"max_speed_mps": 4}).status_code == 422
    assert operator.put(f"/api/v1/vehicles/{vehicle_id}/config", json={"config": [1]}).status_code == 422
