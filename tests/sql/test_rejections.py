"""Every reason code: bad input is dead-lettered with a reason, the broker's INSERT still succeeds."""
from __future__ import annotations

import base64
import json

import psycopg2
import psycopg2.extras
import pytest

from tests.sql.conftest import OTHER_VEHICLE, VEHICLE, Inbox, b64, envelope, ingest_url_for, now_ms

LONG = "x" * 65


def _without(field: str) -> dict:
    message = envelope()
    del message[field]
    return message


# (inbox kind, how to send it, expected reason) — one row per way a message can be wrong
CASES = [
    ("telemetry", {"topic": "fleet/v1/veh-1/status"}, envelope(), "bad_topic"),
    ("telemetry", {"topic": "fleet/v2/veh-1/telemetry"}, envelope(), "bad_topic"),
    ("telemetry", {"topic": "fleet/v1/veh-1/telemetry/extra"}, envelope(), "bad_topic"),
    ("telemetry", {"topic": "fleet/v1/veh-2/telemetry"}, envelope(), "topic_client_mismatch"),
    ("telemetry", {"raw_b64": ""}, None, "empty_payload"),
    ("telemetry", {"raw_b64": "***not base64***"}, None, "bad_base64"),
    ("telemetry", {}, b"\xff\xfe{\"v\":1}", "not_utf8"),
    ("telemetry", {}, b"{\"v\":1, \x00}", "not_utf8"),
    ("telemetry", {}, "{not json", "not_json"),
    ("telemetry", {}, [1, 2, 3], "not_object"),
    ("telemetry", {}, "\"just a string\"", "not_object"),
    ("telemetry", {}, _without("v"), "missing_field"),
    ("telemetry", {}, _without("msg_id"), "missing_field"),
    ("telemetry", {}, _without("seq"), "missing_field"),
    ("telemetry", {}, _without("ts"), "missing_field"),
    ("telemetry", {}, _without("data"), "missing_field"),
    ("telemetry", {}, envelope({"lon": 11.5}), "missing_field"),
    ("telemetry", {}, envelope(v="1"), "wrong_type"),
    ("telemetry", {}, envelope(msg_id=12345), "wrong_type"),
    ("telemetry", {}, envelope(seq="7"), "wrong_type"),
    ("telemetry", {}, envelope(ts="2026-01-01T00:00:00Z"), "wrong_type"),
    ("telemetry", {}, envelope(ts=1763900000123.5), "wrong_type"),
    ("telemetry", {}, envelope(data=[1, 2]), "wrong_type"),
    ("telemetry", {}, envelope({"lat": "48.1", "lon": 11.5}), "wrong_type"),
    ("telemetry", {}, envelope({"lat": 48.1, "lon": 11.5, "speed_mps": True}), "wrong_type"),
    ("telemetry", {}, envelope(v=2), "unsupported_version"),
    ("telemetry", {}, envelope(msg_id=""), "bad_msg_id"),
    ("telemetry", {}, envelope(msg_id=LONG), "bad_msg_id"),
    ("telemetry", {}, envelope(ts=1000), "ts_out_of_range"),
    ("telemetry", {}, envelope(ts=now_ms() + 3 * 86_400_000), "ts_out_of_range"),
    ("telemetry", {}, envelope({"lat": 91, "lon": 0}), "invalid_value"),
    ("telemetry", {}, envelope({"lat": 0, "lon": 0, "battery_pct": 101}), "invalid_value"),
    ("telemetry", {}, "{\"v\":1,\"msg_id\":\"m\",\"seq\":1,\"ts\":1763900000123,\"data\":{\"lat\":1e400,\"lon\":0}}",
     "invalid_value"),
    ("telemetry", {}, envelope(seq=-1), "invalid_value"),
    ("telemetry", {}, envelope({"lat": 0, "lon": 0, "vehicle_id": OTHER_VEHICLE}), "vehicle_id_mismatch"),
    ("telemetry", {}, envelope(vehicle_id=OTHER_VEHICLE), "vehicle_id_mismatch"),
    ("telemetry", {}, {"v": 1, "batch": []}, "bad_batch"),
    ("telemetry", {}, {"v": 1, "batch": {"not": "a list"}}, "bad_batch"),
    ("telemetry", {"clientid": "ghost", "topic": "fleet/v1/ghost/telemetry"}, envelope(), "unknown_vehicle"),
    ("telemetry", {"clientid": "revoked-1", "topic": "fleet/v1/revoked-1/telemetry"}, envelope(),
     "vehicle_not_active"),
    ("status", {}, {"v": 1, "batch": [envelope({"mode": "AUTO"})]}, "bad_batch"),
    ("status", {}, envelope({"battery_pct": 50}), "missing_field"),
    ("status", {}, envelope({"mode": "TURBO"}), "invalid_value"),
    ("status", {}, envelope({"mode": "AUTO", "errors": [{"code": "E1", "level": "PANIC"}]}), "invalid_value"),
    ("status", {}, envelope({"mode": "AUTO", "errors": [{"level": "FATAL"}]}), "missing_field"),
    ("status", {}, envelope({"mode": "AUTO", "errors": "none"}), "wrong_type"),
    ("status", {}, envelope({"mode": "AUTO", "estop": "no"}), "wrong_type"),
    ("status", {}, envelope({"mode": "AUTO", "config_version": "3"}), "wrong_type"),
    ("status", {}, envelope({"mode": "AUTO", "config": [1]}), "wrong_type"),
    ("status", {"clientid": "ghost", "topic": "fleet/v1/ghost/status"}, envelope({"mode": "AUTO"}),
     "unknown_vehicle"),
    ("mission", {}, envelope({"event": "accepted"}), "missing_field"),
    ("mission", {}, envelope({"mission_id": "not-a-uuid", "event": "accepted"}), "invalid_value"),
    ("mission", {}, envelope({"mission_id": "00000000-0000-0000-0000-000000000000", "event": "teleported"}),
     "invalid_value"),
    ("mission", {}, envelope({"mission_id": "00000000-0000-0000-0000-000000000000", "event": "accepted"}),
     "unknown_mission"),
    ("connection", {}, envelope({"state": "SLEEPY"}), "invalid_value"),
    ("connection", {}, envelope({}), "missing_field"),
    ("connection", {"topic": "fleet/v1/veh-2/connection"}, envelope({"state": "ONLINE"}), "topic_client_mismatch"),
]


def _payload_b64(payload) -> str | None:
    if isinstance(payload, bytes):
        return base64.b64encode(payload).decode()
    return b64(payload)


@pytest.fixture(scope="module")
def shared(stack, module_db_url):
    """One database for the whole table of cases: each case only adds rejected_messages rows, cleared before it."""
    app = psycopg2.connect(module_db_url)
    app.autocommit = True
    ingest = psycopg2.connect(ingest_url_for(stack, module_db_url))
    ingest.autocommit = True
    with app.cursor() as cur:
        cur.execute("INSERT INTO fleets (id, name) VALUES ('fleet-a', 'Fleet A')")
        cur.execute("INSERT INTO vehicles (id, fleet_id, status) VALUES ('veh-1', 'fleet-a', 'active'), "
                    "('veh-2', 'fleet-a', 'active'), ('revoked-1', 'fleet-a', 'revoked')")
    yield app, Inbox(ingest, app)
    app.close()
    ingest.close()


@pytest.mark.parametrize(("kind", "how", "payload", "reason"), CASES,
                         ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_bad_message_is_dead_lettered_with_its_reason(shared, kind, how, payload, reason):
    app, inbox = shared
    with app.cursor() as cur:
        cur.execute("DELETE FROM rejected_messages")

    def q(sql):
        with app.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql)
            return cur.fetchall()
    how = dict(how)
    clientid = how.pop("clientid", VEHICLE)
    raw_b64 = how.pop("raw_b64", None)
    getattr(inbox, kind)(payload, clientid=clientid, raw_b64=raw_b64 if raw_b64 is not None else _payload_b64(payload),
                         **how)

    rejected = q("SELECT clientid, topic, reason, detail, payload, payload_size FROM rejected_messages")
    assert [r["reason"] for r in rejected] == [reason], rejected
    assert rejected[0]["clientid"] == clientid
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 0
    assert q("SELECT count(*) AS n FROM vehicle_status")[0]["n"] == 0


def test_oversize_payload_is_rejected_and_its_bytes_capped(inbox, vehicles, q):
    big = envelope({"lat": 1, "lon": 1, "blob": "y" * 300_000})
    inbox.telemetry(big)
    [row] = q("SELECT reason, payload, payload_size, payload_truncated FROM rejected_messages")
    assert row["reason"] == "oversize"
    assert row["payload_size"] == len(json.dumps(big).encode())
    assert row["payload_truncated"] is True and len(bytes(row["payload"])) == 4096


def test_raw_bytes_of_a_rejected_message_are_kept(inbox, vehicles, q):
    inbox.telemetry(b"\xff\xfe garbage", raw_b64=base64.b64encode(b"\xff\xfe garbage").decode())
    [row] = q("SELECT reason, payload, payload_truncated FROM rejected_messages")
    assert bytes(row["payload"]) == b"\xff\xfe garbage" and row["payload_truncated"] is False


def test_acl_denials_are_dead_lettered(inbox, vehicles, q):
    inbox.authz_denied("fleet/v1/veh-2/telemetry", "publish")
    inbox.authz_denied("fleet/v1/+/cmd", "subscribe")
    rows = q("SELECT clientid, topic, reason, detail FROM rejected_messages ORDER BY id")
    assert [(r["reason"], r["topic"], r["detail"]) for r in rows] == [
        ("acl_denied", "fleet/v1/veh-2/telemetry", "action=publish"),
        ("acl_denied", "fleet/v1/+/cmd", "action=subscribe")]


def test_unknown_presence_event_is_dead_lettered(inbox, vehicles, q):
    inbox.presence("client.exploded")
    assert [r["reason"] for r in q("SELECT reason FROM rejected_messages")] == ["unknown_event"]
