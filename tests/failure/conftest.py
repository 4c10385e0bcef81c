"""Outage and fault tests stop and start parts of the system or break the database on purpose, so they get a stack of
their own (same launcher as ``make run``), never the session's shared one. One stack serves every module here."""
from __future__ import annotations

import os

import pytest

from fleetctl.stack import Stack, StackConfig
from tests.conftest import free_ports, track_rule_actions
from tests.support.operators import ApiClient, unique
from tests.support.required import require_components
from tests.support.vehicle import MqttVehicle


@pytest.fixture(scope="package")
def own_stack(state_dirs):
    messages: list[str] = []
    lines: list[tuple[str, str]] = []
    # JSON log lines, so a test can find the worker's alarms; the worker reads the broker's counters every second
    config = StackConfig(state_dir=state_dirs("outage-stack"), ports=free_ports(), durable=False,
                         extra_env={"FLEET_LOG_LEVEL": os.environ.get("FLEET_TEST_LOG_LEVEL", "INFO"),
                                    "FLEET_LOG_FORMAT": "json", "WORKER_BROKER_CHECK_S": "1"})
    stack = Stack(config, out=messages.append, on_line=lambda name, line: lines.append((name, line)))
    stack.lines = lines   # the components' log lines, (name, line), for tests that look for an event
    stack.start()
    try:
        require_components(stack, "authsvc", "broker", "api", "worker")
    except (pytest.skip.Exception, pytest.fail.Exception):
        stack.stop("components missing")
        raise
    track_rule_actions(stack)
    yield stack
    stack.stop("outage tests finished")


@pytest.fixture(scope="package")
def own_admin(own_stack) -> ApiClient:
    return ApiClient(own_stack.url("api")).login("admin", own_stack.secrets["FLEET_ADMIN_PASSWORD"])


@pytest.fixture(scope="package")
def own_fleet(own_admin) -> str:
    fleet_id = unique("outage")
    assert own_admin.post("/api/v1/fleets", json={"id": fleet_id, "name": fleet_id}).status_code == 201
    return fleet_id


@pytest.fixture
def connected_vehicles(own_stack, own_admin, own_fleet):
    """``connected_vehicles(n)``: n vehicles created over the API, registered over MQTT, connected."""
    vehicles: list[MqttVehicle] = []

    def _make(n: int) -> list[MqttVehicle]:
        batch = []
        for _ in range(n):
            vehicle_id = unique("veh")
            response = own_admin.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": own_fleet})
            assert response.status_code == 201, response.text
            vehicle = MqttVehicle("127.0.0.1", own_stack.config.ports.mqtt, vehicle_id)
            vehicle.secret = vehicle.register(response.json()["enrollment"]["token"])
            vehicle.connect(vehicle.secret)
            vehicle.subscribe_commands()
            batch.append(vehicle)
        vehicles.extend(batch)
        return batch
    yield _make
    for vehicle in vehicles:
        vehicle.close()
