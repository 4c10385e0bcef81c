"""Generated MQTT payloads — garbage bytes, broken JSON, envelopes with wrong types, missing or extra fields —
sent by a registered vehicle on its own topics. Every one is either stored or dead-lettered with a reason:
nothing is lost, nothing crashes, and the vehicle stays connected."""
from __future__ import annotations

import json
import os
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcore import topics
from tests.support.database import rows
from tests.support.operators import ApiClient, unique
from tests.support.reliability import record
from tests.support.vehicle import MqttVehicle
from tests.support.waiting import wait_until

KINDS = (topics.Kind.TELEMETRY, topics.Kind.STATUS, topics.Kind.MISSION)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.text(max_size=80))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                           max_leaves=12)
telemetry_data = st.fixed_dictionaries({"lat": st.one_of(st.floats(-100, 100), scalars),
                                        "lon": st.one_of(st.floats(-200, 200), scalars)},
                                       optional={"speed_mps": scalars, "battery_pct": scalars,
                                                 "heading_deg": scalars, "extra": json_values})
status_data = st.fixed_dictionaries({"mode": st.one_of(st.sampled_from(["AUTO", "MANUAL", "SERVICE", "ESTOP"]),
                                                       scalars)},
                                    optional={"battery_pct": scalars, "errors": json_values, "estop": scalars})
mission_data = st.fixed_dictionaries({"mission_id": st.one_of(st.uuids().map(str), scalars),
                                      "event": st.one_of(st.sampled_from(["accepted", "progress", "completed"]),
                                                         scalars)})
envelopes = st.fixed_dictionaries(
    {"v": st.one_of(st.just(1), scalars), "seq": st.one_of(st.integers(0, 2**40), scalars),
     "ts": st.one_of(st.integers(1_600_000_000_000, 1_900_000_000_000), scalars),
     "data": st.one_of(telemetry_data, status_data, mission_data, json_values)},
    optional={"vehicle_id": st.text(max_size=20), "batch": json_values})
payloads = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    envelopes.map(lambda e: json.dumps({**e, "msg_id": uuid.uuid4().hex}).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@pytest.fixture(scope="module")
def fuzz_vehicle(stack, api_url):
    admin = ApiClient(api_url).login("admin", stack.secrets["FLEET_ADMIN_PASSWORD"])
    fleet_id = unique("fuzz")
    assert admin.post("/api/v1/fleets", json={"id": fleet_id, "name": fleet_id}).status_code == 201
    vehicle_id = unique("fuzzveh")
    created = admin.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": fleet_id}).json()
    vehicle = MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle_id)
    vehicle.connect(vehicle.register(created["enrollment"]["token"]))
    yield vehicle
    vehicle.close()


def _accounted(stack, vehicle_id: str) -> int:
    [row] = rows(stack.database_url, """
        SELECT (SELECT count(*) FROM rejected_messages WHERE clientid = %(v)s)
             + (SELECT count(*) FROM telemetry WHERE vehicle_id = %(v)s)
             + (SELECT count(*) FROM vehicle_status WHERE vehicle_id = %(v)s)
             + (SELECT count(*) FROM mission_events WHERE actor_id = %(v)s) AS n""", {"v": vehicle_id})
    return row["n"]


@settings(max_examples=int(os.environ.get("FLEET_FUZZ_EXAMPLES", "12")), deadline=None,
          derandomize=os.environ.get("FLEET_FUZZ_RANDOM") != "1",
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(st.sampled_from(KINDS), payloads), min_size=1, max_size=25))
def test_every_generated_payload_is_stored_or_dead_lettered(stack, fuzz_vehicle, batch):
    before = _accounted(stack, fuzz_vehicle.vehicle_id)
    for kind, payload in batch:
        fuzz_vehicle.publish_raw(topics.vehicle_topic(fuzz_vehicle.vehicle_id, kind), payload)
    expected = before + len(batch)
    # A valid telemetry batch envelope stores several rows for one message: at least one row per message.
    wait_until(lambda: _accounted(stack, fuzz_vehicle.vehicle_id) >= expected, timeout=20,
               message=lambda: f"accounted {_accounted(stack, fuzz_vehicle.vehicle_id) - before} of {len(batch)}")
    assert fuzz_vehicle.connected
    record("fuzz", "generated MQTT payloads (hypothesis)", payloads=len(batch), unaccounted=0, broker_crashes=0)
