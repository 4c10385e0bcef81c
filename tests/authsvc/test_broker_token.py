"""Only the broker may call authsvc: without the shared secret every /mqtt endpoint answers 401 and logs it."""
from __future__ import annotations

import pytest

from tests.authsvc.conftest import AuthsvcClient
from tests.support.waiting import wait_until

ENDPOINTS = {
    "/mqtt/authn": {"clientid": "veh-1", "username": "veh-1", "password": "x"},
    "/mqtt/authz": {"clientid": "veh-1", "username": "veh-1", "topic": "fleet/v1/veh-1/telemetry",
                    "action": "publish", "role": "vehicle"},
    "/mqtt/register": {"clientid": "veh-1", "username": "veh-1", "topic": "fleet/v1/veh-1/register/request",
                       "payload_b64": "e30=", "publish_received_at": 0},
}


@pytest.mark.parametrize("path", list(ENDPOINTS))
@pytest.mark.parametrize("token", [None, "", "wrong-token-of-some-length", "x"])
def test_missing_or_wrong_shared_secret_is_401(authsvc_url, path, token):
    client = AuthsvcClient(authsvc_url, token)
    response = client.post(path, ENDPOINTS[path])
    assert response.status_code == 401
    body = response.json()
    assert body["code"] == "unauthorized" and "x-fleet-broker-token" in body["message"]


def test_rejected_callers_are_logged_without_the_token(authsvc_url, stack):
    AuthsvcClient(authsvc_url, "guessed-token-0123456789").post("/mqtt/authn", ENDPOINTS["/mqtt/authn"])
    log_path = stack.log_dir / "authsvc.log"
    text = wait_until(lambda: "reason=wrong" in log_path.read_text() and log_path.read_text(),
                      message="the rejected call was not logged")
    assert "event=authsvc.broker_token_rejected" in text
    assert "guessed-token-0123456789" not in text


def test_health_needs_no_token(authsvc_url):
    response = AuthsvcClient(authsvc_url, None).session.get(f"{authsvc_url}/healthz", timeout=10)
    assert response.status_code == 200 and response.json() == {"status": "ok", "database": "up"}


def test_unknown_paths_and_methods_are_json_errors(broker, authsvc_url):
    for path in ("/mqtt/authn", "/mqtt/authz", "/mqtt/register"):
        response = broker.session.get(f"{authsvc_url}{path}", timeout=10)
        assert response.status_code == 405 and response.json()["code"] == "method_not_allowed", path
    response = broker.session.get(f"{authsvc_url}/nope", timeout=10)
    assert response.status_code == 404 and response.json()["code"] == "not_found"
