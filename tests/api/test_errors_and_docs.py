"""Every failure is a JSON error {code, message, details}; the OpenAPI document describes the API."""
from __future__ import annotations

import pytest


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
    assert me["security"] == [{"bearerAuth": []}]
    assert "401" in me["responses"]
    error = spec["components"]["schemas"]["Error"]
    assert set(error["properties"]) == {"code", "message", "details"}


@pytest.mark.parametrize("path", ["/docs"])
def test_swagger_ui_page_is_served(anonymous, path):
    response = anonymous.get(path)
    assert response.status_code == 200
    assert "swagger" in response.text.lower()
