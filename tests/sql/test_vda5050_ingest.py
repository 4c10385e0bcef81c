"""The VDA 5050 inbox (sql/code/26_vda5050.sql) as the broker's role meets it: every way a message can be wrong is
dead-lettered with a reason and the INSERT succeeds; a good state lands as status, telemetry and mission events."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tests.sql.conftest import VEHICLE, b64, now_ms

SERIAL = "SN-1"
TOPIC = f"uagv/v2/Acme/{SERIAL}/state"


def iso(ms: int | None = None) -> str:
    when = datetime.fromtimestamp((ms or now_ms()) / 1000, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def state(**fields) -> dict:
    message = {"headerId": 1, "timestamp": iso(), "version": "2.0.0", "manufacturer": "Acme", "serialNumber": SERIAL,
               "orderId": "", "orderUpdateId": 0, "lastNodeId": "", "lastNodeSequenceId": 0, "nodeStates": [],
               "edgeStates": [], "driving": False, "actionStates": [], "operatingMode": "AUTOMATIC", "errors": [],
               "batteryState": {"batteryCharge": 75.5, "charging": False},
               "safetyState": {"eStop": "NONE", "fieldViolation": False},
               "agvPosition": {"x": 10.0, "y": 0.0, "theta": 0.0, "mapId": "site", "positionInitialized": True}}
    message.update(fields)
    return message


@pytest.fixture
def vda(conn, vehicles):
    with conn.cursor() as cur:
        cur.execute("INSERT INTO vda5050_vehicles (vehicle_id, manufacturer, serial_number, map_id, origin_lat, "
                    "origin_lon) VALUES (%s, 'Acme', %s, 'site', 48.0, 11.0)", (VEHICLE, SERIAL))
    return VEHICLE


def send(ingest_conn, payload, *, topic: str = TOPIC, clientid: str = VEHICLE, raw_b64: str | None = None) -> None:
    with ingest_conn.cursor() as cur:
        cur.execute("INSERT INTO ingest.vda5050_inbox (clientid, topic, payload_b64, received_at_ms) "
                    "VALUES (%s, %s, %s, %s::bigint)",
                    (clientid, topic, raw_b64 if raw_b64 is not None else b64(payload), now_ms()))


CASES = [
    ({"topic": "uagv/v1/Acme/SN-1/state"}, state(), "bad_topic", None),
    ({"topic": "uagv/v2/Acme/SN-1/order"}, state(), "bad_topic", None),
    ({"topic": "uagv/v2/Acme/SN-1/state/x"}, state(), "bad_topic", None),
    ({"topic": "uagv/v2/Acme/SN-2/state"}, state(), "topic_client_mismatch", "veh-1 is Acme/SN-1"),
    ({"clientid": "veh-2", "topic": TOPIC}, state(), "topic_client_mismatch", "not a VDA 5050 vehicle"),
    ({"raw_b64": ""}, None, "empty_payload", None),
    ({"raw_b64": "***"}, None, "bad_base64", None),
    ({}, b"\xff\xfe{}", "not_utf8", None),
    ({}, "{nope", "not_json", None),
    ({}, [1, 2], "wrong_type", "state must be object"),
    ({}, {k: v for k, v in state().items() if k != "safetyState"}, "missing_field", "state.safetyState"),
    ({}, state(nodeStates=[{"nodeId": "a", "released": True}]), "missing_field", "state.nodeStates[0].sequenceId"),
    ({}, state(headerId=1.5), "wrong_type", "state.headerId must be integer"),
    ({}, state(agvPosition={"x": "1", "y": 0, "theta": 0, "mapId": "m", "positionInitialized": True}),
     "wrong_type", "state.agvPosition.x must be number"),
    ({}, state(safetyState={"eStop": "PANIC", "fieldViolation": False}), "invalid_value",
     "state.safetyState.eStop \"PANIC\" not in its enum"),
    ({}, state(batteryState={"batteryCharge": 50, "charging": False, "batteryHealth": 101}), "invalid_value",
     "state.batteryState.batteryHealth 101 out of range"),
    ({}, state(timestamp="2026-13-45T99:00:00Z"), "invalid_value", "state.timestamp is not an ISO 8601"),
    ({}, state(timestamp=iso(1000)), "ts_out_of_range", None),
    ({}, state(manufacturer="Other"), "vehicle_id_mismatch", "payload names Other/SN-1"),
    # allowed by the schema, too large for a double: dead-lettered, not raised
    ({}, json.dumps(state(agvPosition={"x": 1.0, "y": 0, "theta": 0, "mapId": "m", "positionInitialized": True}))
     .replace('"x": 1.0', '"x": 1e400'),
     "invalid_value", "state: "),
]


@pytest.mark.parametrize(("how", "payload", "reason", "detail"), CASES)
def test_bad_vda_message_is_dead_lettered(vda, ingest_conn, q, how, payload, reason, detail):
    send(ingest_conn, payload, **how)   # never raises
    [row] = q("SELECT reason, detail, clientid FROM rejected_messages")
    assert row["reason"] == reason, row
    if detail is not None:
        assert row["detail"].startswith(detail), row
    assert q("SELECT count(*) AS n FROM vehicle_status")[0]["n"] == 0
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 0


def test_good_state_is_status_and_telemetry(vda, ingest_conn, q):
    send(ingest_conn, state(errors=[{"errorType": "lowBattery", "errorLevel": "FATAL", "errorReferences": []}],
                            paused=True))
    assert q("SELECT * FROM rejected_messages") == []
    [latest] = q("SELECT lat, lon, battery_pct, health, estop, mode FROM vehicle_state WHERE vehicle_id = %s",
                 (VEHICLE,))
    assert latest["lat"] == pytest.approx(48.0) and latest["lon"] > 11.0
    assert (latest["battery_pct"], latest["health"], latest["estop"], latest["mode"]) == (75.5, "FATAL", True, "AUTO")
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 1


def test_cleared_retained_connection_is_ignored_and_online_is_presence(vda, ingest_conn, q):
    send(ingest_conn, None, topic=f"uagv/v2/Acme/{SERIAL}/connection", raw_b64="")
    send(ingest_conn, {"headerId": 0, "timestamp": iso(), "version": "2.0.0", "manufacturer": "Acme",
                       "serialNumber": SERIAL, "connectionState": "ONLINE"}, topic=f"uagv/v2/Acme/{SERIAL}/connection")
    assert q("SELECT * FROM rejected_messages") == []
    assert q("SELECT connection_state FROM vehicle_state WHERE vehicle_id = %s", (VEHICLE,)) == [
        {"connection_state": "ONLINE"}]


def test_the_loaded_schemas_are_the_packages(q):
    from fleetcore import vda5050
    stored = {row["name"]: row for row in q("SELECT name, document, source FROM vda5050_schemas")}
    installed = vda5050.schema_documents()
    assert set(stored) == set(installed)
    for name, (document, source) in installed.items():
        assert stored[name]["document"] == document and stored[name]["source"] == source
    assert json.dumps(stored["state"]["document"]["required"]).count("safetyState") == 1


def test_a_state_that_cannot_take_its_lock_is_parked_and_applied_once_free(vda, conn, ingest_conn, q):
    # like our own inboxes (tests/sql/test_parking.py): the broker's INSERT succeeds while vehicle_state is locked,
    # the state waits in ingest.parked, and the worker's retry applies it once the lock is gone
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("LOCK TABLE vehicle_state IN ACCESS EXCLUSIVE MODE")
    try:
        send(ingest_conn, state())
    finally:
        conn.rollback()
        conn.autocommit = True
    [parked] = q("SELECT inbox, clientid, last_error FROM ingest.parked")
    assert (parked["inbox"], parked["clientid"]) == ("vda5050", VEHICLE)
    assert parked["last_error"].startswith("55P03")
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 0
    [done] = q("SELECT * FROM ingest.retry_parked()")
    assert (done["applied"], done["failed"], done["dead_lettered"]) == (1, 0, 0)
    assert q("SELECT count(*) AS n FROM ingest.parked")[0]["n"] == 0
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 1
    assert q("SELECT * FROM rejected_messages") == []
