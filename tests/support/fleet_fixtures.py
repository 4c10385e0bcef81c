"""Fixtures for tests that act as operators (HTTP) and vehicles (MQTT) against the stack's api and broker.

Imported by tests/conftest.py so every test package can use them.
"""
from __future__ import annotations

import uuid

import pytest

from tests.support.operators import ApiClient, unique
from tests.support.required import require_components
from tests.support.vehicle import MqttVehicle
from tests.support.waiting import wait_until


@pytest.fixture(scope="session")
def api_url(stack) -> str:
    require_components(stack, "api")
    return stack.url("api")


@pytest.fixture
def anonymous(api_url) -> ApiClient:
    return ApiClient(api_url)


@pytest.fixture(scope="session")
def admin_password(stack) -> str:
    return stack.secrets["FLEET_ADMIN_PASSWORD"]


@pytest.fixture
def admin(api_url, admin_password) -> ApiClient:
    return ApiClient(api_url).login("admin", admin_password)


@pytest.fixture
def fleet(admin) -> str:
    """A new fleet for this test."""
    fleet_id = unique("fleet")
    response = admin.post("/api/v1/fleets", json={"id": fleet_id, "name": f"Fleet {fleet_id}"})
    assert response.status_code == 201, response.text
    return fleet_id


@pytest.fixture
def make_user(admin, api_url):
    """Create an operator account with a role and fleets; returns a logged-in client."""
    def _make(role: str, fleets: list[str] | tuple = ()) -> ApiClient:
        username = unique(role)
        password = "correct horse battery " + uuid.uuid4().hex[:8]
        response = admin.post("/api/v1/users", json={"username": username, "password": password, "role": role,
                                                      "fleets": list(fleets)})
        assert response.status_code == 201, response.text
        client = ApiClient(api_url).login(username, password)
        client.username, client.password, client.user_id = username, password, response.json()["id"]
        return client
    return _make


@pytest.fixture
def operator(make_user, fleet):
    """An operator of a fresh fleet (``operator.fleet``)."""
    client = make_user("operator", [fleet])
    client.fleet = fleet
    return client


@pytest.fixture
def enroll(operator, stack):
    """Create a vehicle over the API and register it over MQTT with its one-time token.

    ``enroll(connect=True)`` returns a connected MqttVehicle subscribed to its commands and shown online;
    ``vehicle.secret`` is its device secret.
    """
    created = []

    def _enroll(connect: bool = True) -> MqttVehicle:
        vehicle_id = unique("veh")
        response = operator.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": operator.fleet})
        assert response.status_code == 201, response.text
        vehicle = MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle_id)
        vehicle.secret = vehicle.register(response.json()["enrollment"]["token"])
        if connect:
            vehicle.connect(vehicle.secret)
            vehicle.subscribe_commands()
            wait_until(lambda: operator.get(f"/api/v1/vehicles/{vehicle_id}").json()["presence"]["online"],
                       message=f"{vehicle_id} never showed as online")
        created.append(vehicle)
        return vehicle
    yield _enroll
    for vehicle in created:
        vehicle.close()
