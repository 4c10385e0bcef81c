"""Generated MQTT payloads — garbage bytes, broken JSON, envelopes with wrong types, missing or extra fields —
sent by a registered vehicle on its own topics. Every one is either stored or dead-lettered with a reason,
counted exactly (one row per message, one per item of a telemetry batch): nothing is lost, nothing crashes,
and the vehicle stays connected."""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcore import envelope, topics
from tests.support.database import rows
from tests.support.operators import ApiClient, unique
from tests.support.reliability import record
from tests.support.vehicle import MqttVehicle
from tests.support.waiting import wait_until

KINDS = (topics.Kind.TELEMETRY, topics.Kind.STATUS, topics.Kind.MISSION)
# Device times from a week ago (stored) to two days ahead (more than a day ahead: dead-lettered). Not older: the
# maintenance run (every minute) drops telemetry and status past retention by device time, which would take
# rows away while they are being counted.
DAY_MS = 86_400_000
NOW_MS = envelope.now_ms()

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
     "ts": st.one_of(st.integers(NOW_MS - 7 * DAY_MS, NOW_MS + 2 * DAY_MS), scalars),
     "data": st.one_of(telemetry_data, status_data, mission_data, json_values)},
    optional={"vehicle_id": st.text(max_size=20), "batch": json_values})
with_msg_id = envelopes.map(lambda e: {**e, "msg_id": uuid.uuid4().hex})
# {"v":1,"batch":[…]} on the telemetry topic: each item is stored or dead-lettered on its own.
batch_envelopes = st.fixed_dictionaries({"v": st.one_of(st.just(1), scalars),
                                         "batch": st.one_of(st.lists(with_msg_id, max_size=5), json_values)})
payloads = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    with_msg_id.map(lambda e: json.dumps(e).encode()),
    batch_envelopes.map(lambda b: json.dumps(b).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
)


# ingest.settings.max_batch_items (sql/002_ingest.sql): a longer batch is dead-lettered as one message.
MAX_BATCH_ITEMS = 1000


def _as_postgres_json(payload: bytes) -> object:
    """The payload as PostgreSQL's jsonb reads it, or ``ValueError`` where it dead-letters the message instead:
    not UTF-8 (NUL included), not JSON, or JSON that Python accepts and PostgreSQL does not (NaN, Infinity,
    \\u0000, unpaired surrogates)."""
    text = payload.decode("utf-8")
    if "\x00" in text:
        raise ValueError("NUL is not valid text in PostgreSQL")

    def no_constant(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    doc = json.loads(text, parse_constant=no_constant)

    def check(value: object) -> None:
        if isinstance(value, str):
            value.encode("utf-8")          # an unpaired surrogate raises UnicodeEncodeError (a ValueError)
            if "\x00" in value:
                raise ValueError("jsonb cannot hold \\u0000")
        elif isinstance(value, list):
            for item in value:
                check(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                check(key)
                check(item)
    check(doc)
    return doc


def rows_for(kind: topics.Kind, payload: bytes) -> int:
    """How many rows sql/002_ingest.sql writes for one message, stored or dead-lettered: one, except for a
    telemetry batch envelope ``{"v":1,"batch":[…]}`` whose items are each stored or dead-lettered on their own."""
    if kind is not topics.Kind.TELEMETRY:
        return 1
    try:
        doc = _as_postgres_json(payload)
    except ValueError:
        return 1
    if not isinstance(doc, dict) or "batch" not in doc:
        return 1
    version, items = doc.get("v"), doc["batch"]
    version_is_1 = type(version) in (int, float) and version == 1        # jsonb: 1 = 1.0, but true is not 1
    if not version_is_1 or not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_ITEMS:
        return 1
    return len(items)


@dataclass
class FuzzTarget:
    vehicle: MqttVehicle
    broker_pid: int
    disconnects: int                   # before the first example (registration's own)
    checked: dict[str, int]            # the rows the previous example ended with: stored, dead_lettered


@pytest.fixture(scope="module")
def no_dead_letter_cap(stack):
    """Every generated message must leave a row: the fuzz vehicle sends hundreds of bad messages a minute, past the
    dead-letter cap per client (ingest.settings.max_rejected_per_minute, tested in tests/security/
    test_ingest_quotas.py), so the cap is lifted while this module runs and put back afterwards."""
    [before] = rows(stack.database_url, "SELECT max_rejected_per_minute AS cap FROM ingest.settings")
    execute(stack.database_url, "UPDATE ingest.settings SET max_rejected_per_minute = NULL")
    yield
    execute(stack.database_url, "UPDATE ingest.settings SET max_rejected_per_minute = %s", (before["cap"],))


def execute(url: str, sql: str, params: tuple = ()) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def fuzz_target(stack, api_url, no_dead_letter_cap):
    admin = ApiClient(api_url).login("admin", stack.secrets["FLEET_ADMIN_PASSWORD"])
    fleet_id = unique("fuzz")
    assert admin.post("/api/v1/fleets", json={"id": fleet_id, "name": fleet_id}).status_code == 201
    vehicle_id = unique("fuzzveh")
    response = admin.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": fleet_id})
    assert response.status_code == 201, response.text
    vehicle = MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle_id)
    vehicle.connect(vehicle.register(response.json()["enrollment"]["token"]))
    target = FuzzTarget(vehicle, _broker(stack).pid, len(vehicle.disconnects), _counts(stack, vehicle_id))
    yield target
    vehicle.close()
    _expect_unchanged(stack, target, "rows arrived after the last example was counted")


def _broker(stack):
    return next(component.process for component in stack.started if component.name == "broker")


def _counts(stack, vehicle_id: str) -> dict[str, int]:
    [row] = rows(stack.database_url, """
        SELECT (SELECT count(*) FROM telemetry WHERE vehicle_id = %(v)s)
             + (SELECT count(*) FROM vehicle_status WHERE vehicle_id = %(v)s)
             + (SELECT count(*) FROM mission_events WHERE actor_id = %(v)s) AS stored,
               (SELECT count(*) FROM rejected_messages WHERE clientid = %(v)s) AS dead_lettered""", {"v": vehicle_id})
    return row


def _expect_unchanged(stack, target: FuzzTarget, problem: str) -> None:
    # Polled, not read once: a count of the partitioned telemetry table can come out short while the maintenance
    # run moves rows from its default partition into a new day's partition.
    wait_until(lambda: _counts(stack, target.vehicle.vehicle_id) == target.checked, timeout=5,
               message=lambda: f"{problem}: {_counts(stack, target.vehicle.vehicle_id)}, was {target.checked}")


@settings(max_examples=int(os.environ.get("FLEET_FUZZ_EXAMPLES", "12")), deadline=None,
          derandomize=os.environ.get("FLEET_FUZZ_RANDOM") != "1",
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(st.sampled_from(KINDS), payloads), min_size=1, max_size=25))
def test_every_generated_payload_is_stored_or_dead_lettered(stack, fuzz_target, batch):
    vehicle = fuzz_target.vehicle
    _expect_unchanged(stack, fuzz_target, "rows arrived after the previous example was counted")
    before = fuzz_target.checked
    expected = sum(rows_for(kind, payload) for kind, payload in batch)
    target_rows = before["stored"] + before["dead_lettered"] + expected

    def settled() -> dict[str, int] | None:
        now = _counts(stack, vehicle.vehicle_id)
        return now if now["stored"] + now["dead_lettered"] == target_rows else None

    after = None
    try:
        for kind, payload in batch:
            vehicle.publish_raw(topics.vehicle_topic(vehicle.vehicle_id, kind), payload)
        # Exactly the expected rows: more (a message stored twice) never settles either.
        after = wait_until(settled, timeout=20, message=lambda: f"{len(batch)} messages should write {expected} "
                           f"rows: now {_counts(stack, vehicle.vehicle_id)}, before {before}")
    finally:
        fuzz_target.checked = after or _counts(stack, vehicle.vehicle_id)
    stored = after["stored"] - before["stored"]
    dead_lettered = after["dead_lettered"] - before["dead_lettered"]
    broker = _broker(stack)
    broker_crashes = int(broker.pid != fuzz_target.broker_pid or not broker.running())
    assert broker_crashes == 0, "the broker process died or was restarted"
    disconnects = vehicle.disconnects[fuzz_target.disconnects:]
    assert vehicle.connected and disconnects == [], disconnects
    record("fuzz", "generated MQTT payloads (hypothesis)", messages=len(batch), rows_expected=expected,
           stored=stored, dead_lettered=dead_lettered, unaccounted=expected - stored - dead_lettered,
           broker_crashes=broker_crashes, vehicle_disconnects=len(disconnects))
