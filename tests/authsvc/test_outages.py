"""When its database is down authsvc still answers clearly: authn 503 (EMQX: "ignore" → the client is refused,
fail-closed), authz unaffected (it needs no database), registration 503 (the broker retries).

In-process (Flask's test client on the real app) with a database address where nothing listens: stopping the
stack's shared database would break every other test.
"""
from __future__ import annotations

import base64
import json

import pytest

from authsvc import create_app
from authsvc.config import AuthsvcConfig
from tests.conftest import free_port

TOKEN = "broker-token-" + "x" * 20


@pytest.fixture
def client():
    dead = free_port()
    app = create_app(AuthsvcConfig(database_url=f"postgresql://fleet:pw@127.0.0.1:{dead}/fleet", broker_token=TOKEN,
                                   device_secret_key="k" * 40, emqx_api_url=f"http://127.0.0.1:{free_port()}",
                                   emqx_api_key="fleet", emqx_api_secret="s" * 20))
    return app.test_client()


def post(client, path: str, body: dict):
    return client.post(path, data=json.dumps(body), headers={"x-fleet-broker-token": TOKEN,
                                                              "Content-Type": "application/json"})


def test_authn_without_database_is_503_json(client):
    response = post(client, "/mqtt/authn", {"clientid": "veh-1", "username": "veh-1", "password": "secret"})
    assert response.status_code == 503
    assert response.json["code"] == "unavailable"


def test_authz_needs_no_database(client):
    response = post(client, "/mqtt/authz", {"clientid": "veh-1", "username": "veh-1", "role": "vehicle",
                                            "topic": "fleet/v1/veh-1/telemetry", "action": "publish"})
    assert (response.status_code, response.json) == (200, {"result": "allow"})


def test_registration_without_database_is_503_so_the_broker_retries(client):
    payload = base64.b64encode(b'{"v":1,"msg_id":"m1","ts":1,"data":{"enrollment_token":"enr_x"}}').decode()
    response = post(client, "/mqtt/register", {"clientid": "_enroll-veh-1", "username": "veh-1", "payload_b64": payload,
                                               "topic": "fleet/v1/veh-1/register/request",
                                               "publish_received_at": 1})
    assert response.status_code == 503
    assert response.json["code"] == "unavailable"


def test_health_reports_the_database_down(client):
    assert client.get("/healthz").json == {"status": "ok", "database": "down"}
