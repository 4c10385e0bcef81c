"""schemathesis against the OpenAPI document the api serves: generated requests for every operation, as an admin.
No answer may be a 5xx, and every answer must match its declared status codes, content type and schema."""
from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fleetcore import topics
from tests.support.operators import ApiClient, unique
from tests.support.reliability import record
from tests.support.vehicle import MqttVehicle
from tests.support.waiting import wait_until

# Operations that would end the admin session the fuzzer itself uses, or stop every vehicle of the shared stack,
# and the event stream, whose answer never ends (tests/api/test_events.py).
NOT_FUZZED = r"^/api/v1/auth/(logout|refresh)$|^/api/v1/users/\{[^}]+\}$|^/api/v1/emergency-|^/api/v1/events$"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# `make test` runs a fixed, repeatable selection; FLEET_FUZZ_EXAMPLES=200 FLEET_FUZZ_RANDOM=1 digs deeper.
EXAMPLES_PER_OPERATION = int(os.environ.get("FLEET_FUZZ_EXAMPLES", "15"))
DERANDOMIZE = os.environ.get("FLEET_FUZZ_RANDOM") != "1"


def _seed_real_objects(stack, admin: ApiClient) -> dict[str, str]:
    """A vehicle with telemetry, health and a mission, so generated requests also reach the code paths behind a
    real id (random ids mostly end in 404)."""
    fleet_id = unique("fuzzfleet")
    assert admin.post("/api/v1/fleets", json={"id": fleet_id, "name": fleet_id}).status_code == 201
    vehicle_id = unique("fuzzveh")
    token = admin.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": fleet_id}).json()["enrollment"]["token"]
    vehicle = MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle_id)
    vehicle.connect(vehicle.register(token))
    try:
        vehicle.telemetry(lat=48.1, lon=11.5, speed_mps=2.0, heading_deg=90.0)
        vehicle.publish(topics.Kind.STATUS, {"mode": "AUTO", "battery_pct": 80.0, "estop": False,
                                             "errors": [{"code": "W1", "level": "WARNING", "message": "warm"}]})
        mission = admin.post("/api/v1/missions", json={"vehicle_id": vehicle_id, "name": "fuzz",
                                                        "waypoints": [{"lat": 48.1, "lon": 11.5}]}).json()
        wait_until(lambda: admin.get(f"/api/v1/vehicles/{vehicle_id}/status").json().get("items"))
    finally:
        vehicle.close()
    return {"vehicle_id": vehicle_id, "mission_id": mission["id"], "fleet_id": fleet_id}


def test_generated_requests_get_documented_answers(stack, api_url):
    admin = ApiClient(api_url).login("admin", stack.secrets["FLEET_ADMIN_PASSWORD"])
    headers = {"Authorization": f"Bearer {admin.tokens['access_token']}"}
    real_ids = _seed_real_objects(stack, admin)
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json").exclude(path_regex=NOT_FUZZED)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20, "the OpenAPI document lists too few operations"
    calls = 0
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=DERANDOMIZE,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            nonlocal calls
            calls += 1
            # Every other example on an id-taking path uses the real objects instead of generated ids.
            if case.path_parameters and calls % 2 == 0:
                for name, value in real_ids.items():
                    if name in case.path_parameters:
                        case.path_parameters[name] = value
            case.call_and_validate(base_url=api_url, checks=CHECKS, headers=headers)

        fuzz()
    record("fuzz", "generated API requests (schemathesis, all operations)", operations=len(operations),
           requests=calls, server_errors=0, schema_violations=0)
