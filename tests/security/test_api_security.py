"""Hostile operators: SQL-injection strings in every text field and filter, cross-fleet reads, role escalation.
(JWT tampering, expiry, refresh reuse and throttling are in tests/api/test_auth.py.)"""
from __future__ import annotations

import pytest

from tests.support.database import rows
from tests.support.operators import unique
from tests.support.reliability import record

INJECTIONS = ["' OR '1'='1", "x'); DROP TABLE vehicles; --", "\" OR 1=1 --", "1; SELECT pg_sleep(5)",
              "$$ || (SELECT secret_hash FROM device_credentials LIMIT 1) || $$", "\\x00\u0000nul", "🚗' --"]


@pytest.mark.parametrize("evil", INJECTIONS)
def test_injection_strings_are_data_never_sql(operator, stack, evil):
    vehicle_id = unique("veh")
    created = operator.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": operator.fleet, "name": evil,
                                                       "model": evil, "metadata": {evil: evil}})
    if "\u0000" in evil:
        assert created.status_code in (400, 422), created.text       # PostgreSQL text cannot hold NUL
        return
    assert created.status_code == 201, created.text
    assert operator.get(f"/api/v1/vehicles/{vehicle_id}").json()["name"] == evil
    mission = operator.post("/api/v1/missions", json={"vehicle_id": vehicle_id, "name": evil,
                                                       "waypoints": [{"lat": 1, "lon": 2, "name": evil}]})
    assert mission.status_code == 201, mission.text
    assert mission.json()["name"] == evil
    for path, params in (("/api/v1/vehicles", {"fleet_id": evil}), ("/api/v1/vehicles", {"sort": evil}),
                         ("/api/v1/missions", {"vehicle_id": evil}), ("/api/v1/missions", {"state": evil}),
                         ("/api/v1/reports/missions", {"vehicle_id": evil}), ("/api/v1/vehicles", {"near": evil})):
        response = operator.get(path, params=params)
        assert response.status_code in (200, 404, 422), (path, params, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json")
    for path in (f"/api/v1/vehicles/{evil}", f"/api/v1/missions/{evil}"):
        assert operator.get(path).status_code in (404, 422)
    assert rows(stack.database_url, "SELECT count(*) AS n FROM vehicles WHERE id = %s", (vehicle_id,))[0]["n"] == 1
    record("security", "SQL-injection strings in every text field and filter", strings=1, server_errors=0)


def test_other_fleets_are_invisible(operator, make_user, admin):
    other_fleet = unique("fleet")
    assert admin.post("/api/v1/fleets", json={"id": other_fleet, "name": other_fleet}).status_code == 201
    foreign = unique("veh")
    assert admin.post("/api/v1/vehicles", json={"id": foreign, "fleet_id": other_fleet}).status_code == 201
    assert operator.get(f"/api/v1/vehicles/{foreign}").status_code == 404
    assert operator.get(f"/api/v1/vehicles/{foreign}/telemetry").status_code == 404
    assert operator.post(f"/api/v1/vehicles/{foreign}/revoke", json={}).status_code == 404
    assert operator.post(f"/api/v1/vehicles/{foreign}/emergency-stop", json={"reason": "x"}).status_code == 404
    assert foreign not in [v["id"] for v in operator.get("/api/v1/vehicles", params={"per_page": 100}).json()["items"]]
    created = operator.post("/api/v1/vehicles", json={"id": unique("veh"), "fleet_id": other_fleet})
    assert created.status_code in (403, 404)
    report = operator.get("/api/v1/reports/missions", params={"vehicle_id": foreign})
    assert report.status_code in (200, 404) and (report.status_code == 404 or report.json()["missions"] == [])


def test_creating_a_vehicle_never_says_whether_its_id_exists_in_another_fleet(operator, admin):
    """Vehicle ids are global, so a taken id is refused; the answer is the same whichever fleet took it. Before: 409
    `vehicle_exists`, "vehicle … already exists", for a vehicle in a fleet the operator cannot see."""
    other_fleet = unique("fleet")
    assert admin.post("/api/v1/fleets", json={"id": other_fleet, "name": other_fleet}).status_code == 201
    foreign, own = unique("veh"), unique("veh")
    assert admin.post("/api/v1/vehicles", json={"id": foreign, "fleet_id": other_fleet}).status_code == 201
    assert operator.post("/api/v1/vehicles", json={"id": own, "fleet_id": operator.fleet}).status_code == 201

    answers = {}
    for vehicle_id in (foreign, own):
        response = operator.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": operator.fleet})
        body = response.json()
        answers[vehicle_id] = (response.status_code, body["code"], body["message"].replace(vehicle_id, "{id}"),
                               body["details"])
    assert answers[foreign] == answers[own]
    status, code, message, _ = answers[foreign]
    assert (status, code) == (409, "vehicle_id_unavailable") and "exist" not in message


def test_viewers_read_but_never_write(make_user, operator):
    viewer = make_user("viewer", [operator.fleet])
    vehicle_id = unique("veh")
    assert operator.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": operator.fleet}).status_code == 201
    assert viewer.get(f"/api/v1/vehicles/{vehicle_id}").status_code == 200
    for method, path, body in (("post", "/api/v1/vehicles", {"id": unique("veh"), "fleet_id": operator.fleet}),
                               ("post", f"/api/v1/vehicles/{vehicle_id}/revoke", {}),
                               ("post", f"/api/v1/vehicles/{vehicle_id}/enrollment", {}),
                               ("put", f"/api/v1/vehicles/{vehicle_id}/config", {"config": {"max_speed": 3}}),
                               ("post", "/api/v1/users", {"username": unique("u"), "password": "x" * 20,
                                                          "role": "admin"})):
        assert getattr(viewer, method)(path, json=body).status_code == 403, (method, path)


def test_an_operator_cannot_make_themselves_admin(operator):
    me = operator.get("/api/v1/auth/me").json()
    response = operator.patch(f"/api/v1/users/{me['id']}", json={"role": "admin"})
    assert response.status_code == 403
    assert operator.get("/api/v1/auth/me").json()["role"] == "operator"
