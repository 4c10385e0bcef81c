"""Fixtures for authsvc: an HTTP client that speaks as the broker, and vehicles in the stack's database.

authsvc runs as the real server process of the stack; these tests call it exactly as EMQX does (same bodies,
same shared-secret header). Vehicles are created with ``fleetcore.registry`` — the same code the api and
``fleetctl enroll-bulk`` use — directly in the stack's database.
"""
from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass

import pytest
import requests

from fleetcore import credentials, envelope, registry, topics
from fleetcore.db import Database
from tests.api.conftest import unique
from tests.support.required import require_components


class AuthsvcClient:
    """Calls authsvc like the broker: authn, authz and the registration action's rule output."""

    def __init__(self, base_url: str, broker_token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        if broker_token is not None:
            self.session.headers["x-fleet-broker-token"] = broker_token

    def post(self, path: str, body=None, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        if body is not None:
            kwargs["json"] = body
        return self.session.post(f"{self.base_url}{path}", **kwargs)

    def authn(self, clientid: str, password: str, username: str | None = None) -> requests.Response:
        return self.post("/mqtt/authn", {"clientid": clientid, "username": clientid if username is None else username,
                                         "password": password, "peerhost": "127.0.0.1"})

    def authn_result(self, clientid: str, password: str, username: str | None = None) -> dict:
        response = self.authn(clientid, password, username)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("application/json")
        return response.json()

    def authn_enrolling(self, vehicle_id: str, token: str) -> dict:
        """authn as the vehicle's enrolling client would call it: clientid ``_enroll-{vid}``, username ``{vid}``."""
        return self.authn_result(topics.enrollment_client_id(vehicle_id), token, username=vehicle_id)

    def authz(self, role: str, username: str, action: str, topic: str, clientid: str | None = None) -> str:
        """authz for the client of ``role`` of vehicle ``username``; its client id is the role's
        (``_enroll-{vid}`` when enrolling) unless ``clientid`` says otherwise."""
        if clientid is None:
            clientid = topics.enrollment_client_id(username) if role == "enrolling" and topics.is_vehicle_id(
                username) else username
        response = self.post("/mqtt/authz", {"clientid": clientid, "username": username, "topic": topic,
                                             "action": action, "qos": "1", "retain": "false", "role": role})
        assert response.status_code == 200, response.text
        return response.json()["result"]

    def register(self, vehicle_id: str, token: str, msg_id: str | None = None, *, topic: str | None = None,
                 sender: str | None = None, payload: bytes | None = None, **data) -> requests.Response:
        """The rule output the broker posts for a message on fleet/v1/{vid}/register/request, published by the
        enrolling client of ``sender`` (default: ``vehicle_id``)."""
        if payload is None:
            message = envelope.message({"enrollment_token": token, **data}, seq=1, msg_id=msg_id or str(uuid.uuid4()))
            payload = envelope.encode(message)
        return self.post("/mqtt/register", {
            "clientid": topics.enrollment_client_id(sender or vehicle_id), "username": sender or vehicle_id,
            "topic": topic or topics.vehicle_topic(vehicle_id, topics.Kind.REGISTER_REQUEST),
            "payload_b64": base64.b64encode(payload).decode("ascii"), "publish_received_at": envelope.now_ms()})


@pytest.fixture(scope="session")
def authsvc_url(stack) -> str:
    require_components(stack, "authsvc")
    return stack.url("authsvc")


@pytest.fixture(scope="session")
def broker_running(stack) -> bool:
    return "broker" in {c.name for c in stack.started}


@pytest.fixture
def broker(authsvc_url, stack) -> AuthsvcClient:
    return AuthsvcClient(authsvc_url, stack.secrets["FLEET_BROKER_TOKEN"])


@pytest.fixture(scope="session")
def device_key(stack) -> str:
    return stack.secrets["FLEET_DEVICE_SECRET_KEY"]


@pytest.fixture(scope="session")
def stack_db(stack):
    database = Database(stack.database_url, max_connections=4, application_name="tests-authsvc")
    yield database
    database.close()


@pytest.fixture
def fleet_id(stack_db) -> str:
    fleet = unique("fleet")
    with stack_db.transaction() as cur:
        cur.execute("INSERT INTO fleets (id, name) VALUES (%s, %s)", (fleet, f"Fleet {fleet}"))
    return fleet


@dataclass
class EnrolledVehicle:
    id: str
    fleet_id: str
    token: str
    secret: str | None = None


@pytest.fixture
def new_vehicle(stack_db, device_key, fleet_id):
    """A pending vehicle with a fresh enrollment token."""
    def _new(**kwargs) -> EnrolledVehicle:
        with stack_db.transaction() as cur:
            enrollment = registry.create_vehicle(cur, device_key, vehicle_id=unique("veh"), fleet_id=fleet_id,
                                                 actor_type="system", actor_id="tests", **kwargs)
        return EnrolledVehicle(enrollment.vehicle_id, fleet_id, enrollment.token)
    return _new


@pytest.fixture
def active_vehicle(new_vehicle, stack_db, device_key):
    """A registered vehicle with its device secret (registered through the registry, as authsvc does)."""
    def _active() -> EnrolledVehicle:
        vehicle = new_vehicle()
        with stack_db.transaction() as cur:
            outcome = registry.register(cur, device_key, vehicle_id=vehicle.id, enrollment_token=vehicle.token,
                                        request_msg_id=str(uuid.uuid4()))
        assert outcome.accepted, outcome
        vehicle.secret = outcome.secret
        return vehicle
    return _active


def expected_secret(device_key: str, vehicle_id: str, msg_id: str, token: str) -> str:
    """The secret authsvc issues for this request (tests without a broker cannot read the published answer)."""
    return credentials.derive_device_secret(device_key, vehicle_id, msg_id, token)


def vehicle_row(stack_db, vehicle_id: str) -> dict:
    with stack_db.transaction() as cur:
        cur.execute("SELECT * FROM vehicles WHERE id = %s", (vehicle_id,))
        return cur.fetchone()


def credential_rows(stack_db, vehicle_id: str) -> list[dict]:
    with stack_db.transaction() as cur:
        cur.execute("SELECT * FROM device_credentials WHERE vehicle_id = %s ORDER BY id", (vehicle_id,))
        return cur.fetchall()


def audit_actions(stack_db, vehicle_id: str) -> list[str]:
    with stack_db.transaction() as cur:
        cur.execute("SELECT action FROM audit_log WHERE target_type = 'vehicle' AND target_id = %s ORDER BY id",
                    (vehicle_id,))
        return [row["action"] for row in cur.fetchall()]


def registration_summary(response: requests.Response, broker_running: bool) -> dict:
    """The handled outcome of a /mqtt/register call: with a broker 200 (nobody subscribed → delivered false),
    without one 503 after the outcome was decided (the broker would retry)."""
    body = response.json()
    if broker_running:
        assert response.status_code == 200, response.text
        return body
    assert response.status_code == 503, response.text
    assert body["code"] == "answer_not_published"
    return body["details"]
