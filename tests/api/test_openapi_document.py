"""The OpenAPI document validates against the OpenAPI 3.0 schema (the copy schemathesis ships, so nothing loads
from the internet), and documents the mission-control and safety endpoints with their error answers."""
from __future__ import annotations

from jsonschema import Draft4Validator
from schemathesis.specs.openapi.definitions import OPENAPI_30

SAFETY_PATHS = {
    "/api/v1/vehicles/{vehicle_id}/emergency-stop": "post", "/api/v1/vehicles/{vehicle_id}/emergency-release": "post",
    "/api/v1/fleets/{fleet_id}/emergency-stop": "post", "/api/v1/fleets/{fleet_id}/emergency-release": "post",
    "/api/v1/emergency-stop": "post", "/api/v1/emergency-release": "post", "/api/v1/emergency-stops": "get",
    "/api/v1/emergency-stops/{stop_id}": "get", "/api/v1/missions/{mission_id}/pause": "post",
    "/api/v1/missions/{mission_id}/resume": "post", "/api/v1/missions/{mission_id}": "patch",
    "/api/v1/vehicles/{vehicle_id}/capabilities": "get", "/api/v1/audit": "get",
}


def test_the_openapi_document_validates(anonymous):
    spec = anonymous.get("/openapi.json").json()
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in Draft4Validator(OPENAPI_30)
                .iter_errors(spec)]
    assert problems == []


def test_the_safety_endpoints_are_documented(anonymous):
    paths = anonymous.get("/openapi.json").json()["paths"]
    for path, method in SAFETY_PATHS.items():
        assert method in paths.get(path, {}), f"{method.upper()} {path} is not documented"
        assert paths[path][method]["security"] == [{"bearerAuth": []}, {"oauth2": []}]
    create = paths["/api/v1/missions"]["post"]["responses"]
    assert "422" in create and "beyond_capability" in create["422"]["description"]
    release = paths["/api/v1/vehicles/{vehicle_id}/emergency-release"]["post"]["responses"]
    assert "409" in release
