"""Every failure is a JSON error {code, message, details}; the OpenAPI document describes the API."""
from __future__ import annotations

import base64
import json
import re

import pytest
from flask import Flask

from fleetcore import db, errors, topics
from tests.support.operators import unique


def _is_json_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.headers["Content-Type"]
    body = response.json()
    assert set(body) == {"code", "message", "details"}, body
    if code:
        assert body["code"] == code
    return body


def test_unknown_path_is_json_404(anonymous):
    _is_json_error(anonymous.get("/api/v1/no-such-thing"), 404, "not_found")


def test_wrong_method_is_json_405_with_allow(anonymous):
    response = anonymous.delete("/api/v1/auth/login")
    _is_json_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_malformed_json_is_400(anonymous):
    response = anonymous.post("/api/v1/auth/login", data="{not json", headers={"Content-Type": "application/json"})
    body = _is_json_error(response, 400, "bad_request")
    assert "JSON" in body["message"]


def test_a_body_that_is_not_json_is_415(anonymous):
    response = anonymous.post("/api/v1/auth/login", data="username=admin", headers={"Content-Type": "text/plain"})
    _is_json_error(response, 415, "unsupported_media_type")


def test_validation_errors_name_each_field(admin):
    body = _is_json_error(admin.post("/api/v1/fleets", json={"id": "Not Valid!", "unexpected": 1}), 422,
                          "validation_error")
    fields = body["details"]["fields"]["json"]
    assert "id" in fields and "name" in fields and "unexpected" in fields


def test_an_oversized_body_is_413(anonymous):
    response = anonymous.post("/api/v1/auth/login", data="x" * (2 * 1024 * 1024),
                              headers={"Content-Type": "application/json"})
    _is_json_error(response, 413, "payload_too_large")


def test_health_and_metrics_need_no_login(anonymous):
    health = anonymous.get("/healthz")
    assert health.status_code == 200
    assert health.json()["database"] == "up"
    metrics = anonymous.get("/metrics")
    assert metrics.status_code == 200
    assert "fleet_api_requests_total" in metrics.text
    assert 'fleet_missions{state="queued"}' in metrics.text


def test_openapi_document_covers_the_endpoints_and_errors(anonymous):
    spec = anonymous.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/auth/login" in spec["paths"]
    assert "bearerAuth" in spec["components"]["securitySchemes"]
    me = spec["paths"]["/api/v1/auth/me"]["get"]
    assert me["security"] == [{"bearerAuth": []}, {"oauth2": []}]
    assert "401" in me["responses"]
    error = spec["components"]["schemas"]["Error"]
    assert set(error["properties"]) == {"code", "message", "details"}


def test_every_reference_in_the_openapi_document_resolves(anonymous):
    """Schema validation does not follow $ref: a response named after a status the framework does not register
    (e.g. PAYLOAD_TOO_LARGE for 413) left a dangling reference that broke generated clients and the fuzz test."""
    spec = anonymous.get("/openapi.json").json()
    refs = set(re.findall(r'"\$ref": "#/([^"]+)"', json.dumps(spec)))
    assert refs
    for ref in sorted(refs):
        node = spec
        for part in ref.split("/"):
            assert isinstance(node, dict) and part in node, f"#/{ref} does not resolve"
            node = node[part]


@pytest.mark.parametrize("path", ["/docs", "/console/"])
def test_pages_load_every_file_from_the_api_itself(anonymous, path):
    """Swagger UI and the console work offline: every script and style they load is served by the api."""
    response = anonymous.get(path)
    assert response.status_code == 200
    assert "<html" in response.text.lower()
    assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    assert assets, response.text[:500]
    for asset in assets:
        assert not re.match(r"^(https?:)?//", asset), f"{path} loads {asset} from outside the api"
        url = asset if asset.startswith("/") else path.rstrip("/") + "/" + asset
        loaded = anonymous.get(url)
        assert loaded.status_code == 200, (asset, loaded.status_code)
        assert loaded.content, asset


# -- inputs that used to answer 500 ----------------------------------------------------------------------------
@pytest.mark.parametrize("method, path", [
    ("get", "/api/v1/vehicles/veh%00x"), ("get", "/api/v1/vehicles/veh%00x/telemetry"),
    ("get", "/api/v1/vehicles/veh%00x/status"), ("post", "/api/v1/vehicles/veh%00x/emergency-stop"),
    ("get", "/api/v1/fleets/fleet%00x"), ("get", "/api/v1/missions/m%00x"), ("get", "/api/v1/users/1%00")])
def test_a_nul_in_a_path_id_is_404(operator, method, path):
    response = getattr(operator, method)(path, json={"reason": "test"} if method == "post" else None)
    _is_json_error(response, 404, "not_found")


@pytest.mark.parametrize("nested", ["[" * 1000 + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000,
                                    '{"username": "admin", "password": ' + "[" * 65 + "]" * 65 + "}"])
def test_json_nested_too_deeply_is_400_even_before_login(anonymous, nested):
    response = anonymous.post("/api/v1/auth/login", data=nested, headers={"Content-Type": "application/json"})
    assert "nested" in _is_json_error(response, 400, "bad_request")["message"]


def test_json_nested_too_deeply_in_metadata_is_400(operator):
    metadata = '{"a":' * 1000 + "1" + "}" * 1000
    response = operator.post("/api/v1/vehicles", data=f'{{"id": "{unique("veh")}", "fleet_id": "{operator.fleet}", '
                                                      f'"metadata": {metadata}}}',
                             headers={"Content-Type": "application/json"})
    _is_json_error(response, 400, "bad_request")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_422_in_metadata_config_and_task_params(operator, constant):
    vehicle_id = unique("veh")
    json_body = {"Content-Type": "application/json"}
    created = operator.post("/api/v1/vehicles", data=f'{{"id": "{vehicle_id}", "fleet_id": "{operator.fleet}", '
                                                     f'"metadata": {{"x": {constant}}}}}', headers=json_body)
    _is_json_error(created, 422, "validation_error")
    assert operator.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": operator.fleet}).status_code == 201
    for method, path, body in (
            ("patch", f"/api/v1/vehicles/{vehicle_id}", f'{{"metadata": {{"x": {constant}}}}}'),
            ("put", f"/api/v1/vehicles/{vehicle_id}/config", f'{{"config": {{"max_speed": {constant}}}}}'),
            ("post", "/api/v1/missions", f'{{"vehicle_id": "{vehicle_id}", "name": "n", "waypoints": '
                                         f'[{{"lat": 1, "lon": 2}}], "tasks": [{{"type": "t", "params": '
                                         f'{{"x": {constant}}}}}]}}')):
        _is_json_error(getattr(operator, method)(path, data=body, headers=json_body), 422, "validation_error")


def test_ids_ending_in_a_newline_are_422(operator, admin):
    vehicle_id = unique("veh")
    assert operator.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": operator.fleet}).status_code == 201
    for client, path, body in (
            (operator, "/api/v1/vehicles", {"id": unique("veh") + "\n", "fleet_id": operator.fleet}),
            (admin, "/api/v1/fleets", {"id": unique("fleet") + "\n", "name": "x"}),
            (admin, "/api/v1/users", {"username": unique("user") + "\n", "password": "x" * 20, "role": "viewer"}),
            (operator, "/api/v1/missions", {"vehicle_id": vehicle_id + "\n", "name": "n",
                                            "waypoints": [{"lat": 1, "lon": 2}]})):
        _is_json_error(client.post(path, json=body), 422, "validation_error")
    assert not topics.is_vehicle_id(vehicle_id + "\n") and topics.is_vehicle_id(vehicle_id)


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor, everywhere", [
    ("not-base64!", True), (_cursor("no separator"), True), (_cursor("yesterday|1"), True),
    (_cursor("2026-01-01T00:00:00+00:00|1\x00"), True),
    (_cursor("2026-01-01T00:00:00+00:00|x"), False)])   # a fine cursor for raw telemetry (its id is text)
def test_tampered_cursors_are_400(operator, cursor, everywhere):
    vehicle_id = unique("veh")
    assert operator.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": operator.fleet}).status_code == 201
    paths = [(f"/api/v1/vehicles/{vehicle_id}/status", {}), ("/api/v1/reports/missions", {}),
             (f"/api/v1/vehicles/{vehicle_id}/telemetry", {"interval": "1m"})]
    if everywhere:
        paths.append((f"/api/v1/vehicles/{vehicle_id}/telemetry", {}))
    for path, params in paths:
        _is_json_error(operator.get(path, params={"cursor": cursor, **params}), 400, "invalid_cursor")


def test_a_value_the_database_refuses_is_422_not_500(stack):
    """The last line of defence behind validation: psycopg2's DataError (here a real one from PostgreSQL)."""
    app = Flask("data-error")
    errors.register(app, "test")

    @app.route("/cast")
    def cast():
        conn = db.connect(stack.database_url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT %s::int", ("not a number",))
        finally:
            conn.close()
        return "unreachable"

    response = app.test_client().get("/cast")
    assert response.status_code == 422
    assert response.json["code"] == "validation_error"
    assert response.json["details"] == {"database_error": "InvalidTextRepresentation"}
