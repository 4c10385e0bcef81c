"""One name per parameter, and nothing silently ignored: query filters are ``vehicle_id`` and ``fleet_id`` like the
bodies, an unknown query parameter is a 400 that names it, a malformed id in the path a JSON 404 that says why
(api/parameters.py)."""
from __future__ import annotations

import pytest

from tests.api.test_missions import WAYPOINTS
from tests.support.operators import unique


def _mission(client, vehicle_id: str, name: str) -> dict:
    response = client.post("/api/v1/missions", json={"vehicle_id": vehicle_id, "name": name, "waypoints": WAYPOINTS})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def two_vehicles(operator) -> list[str]:
    ids = [unique("veh"), unique("veh")]
    for vehicle_id in ids:
        assert operator.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": operator.fleet}).status_code == 201
    return ids


def test_missions_and_reports_filter_by_vehicle_id(operator, two_vehicles):
    mine, other = two_vehicles
    wanted = _mission(operator, mine, "wanted")
    _mission(operator, other, "other")
    listed = operator.get("/api/v1/missions", params={"vehicle_id": mine}).json()
    assert [m["id"] for m in listed["items"]] == [wanted["id"]]
    report = operator.get("/api/v1/reports/missions", params={"vehicle_id": mine}).json()
    assert [m["id"] for m in report["missions"]] == [wanted["id"]]
    assert report["filters"] == {"vehicle_id": mine}
    in_fleet = operator.get("/api/v1/missions", params={"fleet_id": operator.fleet}).json()
    assert {m["vehicle_id"] for m in in_fleet["items"]} == {mine, other}


def test_vehicles_and_latest_telemetry_filter_by_fleet_id(operator, admin, two_vehicles):
    other_fleet = unique("fleet")
    assert admin.post("/api/v1/fleets", json={"id": other_fleet, "name": other_fleet}).status_code == 201
    assert admin.post("/api/v1/vehicles", json={"id": unique("veh"), "fleet_id": other_fleet}).status_code == 201
    vehicles = admin.get("/api/v1/vehicles", params={"fleet_id": operator.fleet}).json()["items"]
    assert sorted(v["id"] for v in vehicles) == sorted(two_vehicles)
    latest = admin.get("/api/v1/telemetry/latest", params={"fleet_id": operator.fleet}).json()
    assert sorted(item["vehicle_id"] for item in latest["items"]) == sorted(two_vehicles)


@pytest.mark.parametrize("path, params, meant", [
    ("/api/v1/missions", {"vehicle": "x"}, "vehicle_id"),          # the old name is not ignored
    ("/api/v1/reports/missions", {"fleet": "x"}, "fleet_id"),
    ("/api/v1/vehicles", {"fleet": "x"}, "fleet_id"),
    ("/api/v1/telemetry/latest", {"fleet": "x"}, "fleet_id"),
    ("/api/v1/missions", {"per-page": "5"}, "per_page"),
])
def test_an_unknown_query_parameter_is_named_with_the_one_meant(operator, path, params, meant):
    response = operator.get(path, params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    [name] = params
    assert body["code"] == "unknown_parameter" and body["details"]["unknown"] == [name]
    assert meant in body["details"]["allowed"]
    assert f"'{name}' (did you mean '{meant}'?)" in body["message"]


def test_routes_without_query_parameters_take_none(operator, anonymous, two_vehicles):
    mission = _mission(operator, two_vehicles[0], "plain")
    for response in (operator.get(f"/api/v1/missions/{mission['id']}", params={"verbose": "1"}),
                     operator.get("/api/v1/auth/me", params={"x": "1"}),
                     operator.post(f"/api/v1/missions/{mission['id']}/cancel", params={"force": "1"}, json={}),
                     anonymous.get("/healthz", params={"probe": "1"})):
        assert response.status_code == 400, response.text
        assert response.json()["details"]["allowed"] == []
        assert response.json()["message"].endswith("this endpoint takes none")
    assert operator.get(f"/api/v1/missions/{mission['id']}").json()["state"] == "queued", "the cancel never ran"


@pytest.mark.parametrize("method, path, kind", [
    ("GET", "/api/v1/missions/not-a-uuid", "mission"),
    ("POST", "/api/v1/missions/12345/cancel", "mission"),
    ("GET", "/api/v1/users/abc", "user"),
    ("PATCH", "/api/v1/users/0", "user"),
])
def test_a_malformed_id_is_a_json_404_that_says_why(admin, method, path, kind):
    response = admin.request(method, path, json={})
    assert response.status_code == 404, response.text
    body = response.json()
    segment = path.split("/")[4]
    assert body == {"code": "not_found", "details": {},
                    "message": body["message"]} and body["message"].startswith(
        f"no such {kind}: '{segment}' is not a {kind} id (")


def test_the_openapi_document_types_the_ids(anonymous):
    spec = anonymous.get("/openapi.json").json()
    [mission_id] = spec["paths"]["/api/v1/missions/{mission_id}"]["parameters"]
    assert mission_id["schema"] == {"type": "string", "format": "uuid"}
    [user_id] = spec["paths"]["/api/v1/users/{user_id}"]["parameters"]
    assert user_id["schema"] == {"type": "integer", "minimum": 1}
    names = {p["name"] for p in spec["paths"]["/api/v1/missions"]["get"]["parameters"]}
    assert {"vehicle_id", "fleet_id"} <= names and not {"vehicle", "fleet"} & names
