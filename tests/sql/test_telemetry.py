"""Telemetry: stored once with device and receive time, skew flagged, batches split, latest state only forward."""
from __future__ import annotations

import json

import psycopg2

from tests.sql.conftest import OTHER_VEHICLE, VEHICLE, Inbox, envelope, now_ms
from tests.support.faults import fault


def point(q, msg_id=None):
    sql = "SELECT * FROM telemetry" + (" WHERE msg_id = %s" if msg_id else "") + " ORDER BY ts"
    return q(sql, (msg_id,) if msg_id else None)


def state(q, vid=VEHICLE) -> dict:
    return q("SELECT * FROM vehicle_state WHERE vehicle_id = %s", (vid,))[0]


def test_a_point_keeps_device_time_receive_time_and_all_fields(inbox, vehicles, q):
    ts = now_ms() - 500
    message = envelope({"lat": 48.1, "lon": 11.5, "heading_deg": 90.5, "speed_mps": 3.25, "battery_pct": 77,
                        "odometer_m": 1200.5, "motor_temp_c": 41.5}, seq=7, ts=ts)
    inbox.telemetry(message, received_at_ms=ts + 500)
    [row] = point(q)
    assert row["vehicle_id"] == VEHICLE and row["msg_id"] == message["msg_id"] and row["seq"] == 7
    assert int(row["ts"].timestamp() * 1000) == ts
    assert int(row["received_at"].timestamp() * 1000) == ts + 500
    assert (row["lat"], row["lon"], row["heading_deg"], row["speed_mps"], row["battery_pct"], row["odometer_m"]) == \
        (48.1, 11.5, 90.5, 3.25, 77, 1200.5)
    assert row["extra"] == {"motor_temp_c": 41.5}
    assert row["clock_skewed"] is False
    assert q("SELECT count(*) AS n FROM rejected_messages")[0]["n"] == 0


def test_a_device_clock_off_by_more_than_the_threshold_is_flagged_not_trusted(inbox, vehicles, q, conn):
    received = now_ms()
    inbox.telemetry(envelope(ts=received - 3 * 60_000, seq=1), received_at_ms=received)   # 3 min behind
    inbox.telemetry(envelope(ts=received - 60_000, seq=2), received_at_ms=received)       # 1 min: fine
    assert [r["clock_skewed"] for r in point(q)] == [True, False]
    assert state(q)["clock_skewed"] is False
    with conn.cursor() as cur:
        cur.execute("UPDATE ingest.settings SET clock_skew_threshold = '30 seconds'")
    inbox.telemetry(envelope(ts=received - 45_000, seq=3), received_at_ms=received)
    assert point(q)[2]["clock_skewed"] is True and state(q)["clock_skewed"] is True


def test_a_qos1_redelivery_is_stored_once(inbox, vehicles, q):
    message = envelope(seq=1)
    for _ in range(3):
        inbox.telemetry(message)
    assert len(point(q)) == 1
    # also when it arrives after newer points (out of order redelivery)
    inbox.telemetry(envelope(seq=2, ts=message["ts"] + 1000))
    inbox.telemetry(message)
    assert len(point(q)) == 2
    assert q("SELECT count(*) AS n FROM rejected_messages")[0]["n"] == 0


def test_latest_state_moves_forward_only_by_device_time_then_seq(inbox, vehicles, q):
    t = now_ms() - 10_000
    inbox.telemetry(envelope({"lat": 10, "lon": 10, "battery_pct": 90}, seq=5, ts=t + 2000))
    inbox.telemetry(envelope({"lat": 1, "lon": 1, "battery_pct": 99}, seq=9, ts=t + 1000))   # older ts, higher seq
    inbox.telemetry(envelope({"lat": 2, "lon": 2}, seq=4, ts=t + 2000))                     # same ts, lower seq
    s = state(q)
    assert (s["lat"], s["lon"], s["battery_pct"], s["telemetry_seq"]) == (10, 10, 90, 5)
    inbox.telemetry(envelope({"lat": 3, "lon": 3}, seq=6, ts=t + 2000))                     # same ts, higher seq
    s = state(q)
    assert (s["lat"], s["lon"], s["telemetry_seq"]) == (3, 3, 6)
    assert s["battery_pct"] == 90, "a field the newest point omits keeps its last known value"
    assert len(point(q)) == 4, "every point is history, even the ones too old for the latest state"
    assert s["last_seen_at"] is not None and s["online"] is True


def test_a_batch_is_stored_item_by_item_with_the_same_checks(inbox, vehicles, q):
    t = now_ms() - 60_000
    good = [envelope(seq=i, ts=t + i * 1000) for i in range(1, 4)]
    bad = envelope({"lat": "north", "lon": 1}, seq=4, ts=t + 4000)
    spoofed = envelope(seq=5, ts=t + 5000, vehicle_id="veh-2")
    inbox.telemetry({"v": 1, "batch": [*good, bad, spoofed, good[0], {"v": 1, "batch": []}, 42]})
    assert [r["msg_id"] for r in point(q)] == [m["msg_id"] for m in good]
    rejected = q("SELECT reason, payload FROM rejected_messages ORDER BY id")
    assert [r["reason"] for r in rejected] == ["wrong_type", "vehicle_id_mismatch", "bad_batch", "not_object"]
    assert json.loads(bytes(rejected[0]["payload"]))["msg_id"] == bad["msg_id"], "the item itself is kept"
    assert state(q)["telemetry_seq"] == 3


def test_a_batch_with_another_version_or_too_many_items_is_rejected_whole(inbox, vehicles, q, conn):
    inbox.telemetry({"v": 2, "batch": [envelope()]})
    with conn.cursor() as cur:
        cur.execute("UPDATE ingest.settings SET max_batch_items = 2")
    inbox.telemetry({"v": 1, "batch": [envelope(seq=i) for i in range(3)]})
    assert [r["reason"] for r in q("SELECT reason FROM rejected_messages ORDER BY id")] == \
        ["unsupported_version", "bad_batch"]
    assert point(q) == []


def test_every_vehicle_gets_a_state_row_and_revocation_stops_ingest(inbox, vehicles, q, conn):
    assert {r["vehicle_id"] for r in q("SELECT vehicle_id FROM vehicle_state")} == set(vehicles)
    with conn.cursor() as cur:
        cur.execute("UPDATE vehicles SET status = 'revoked', revoked_at = now() WHERE id = %s", (VEHICLE,))
    inbox.telemetry(envelope())
    assert [r["reason"] for r in q("SELECT reason FROM rejected_messages")] == ["vehicle_not_active"]
    with conn.cursor() as cur:
        cur.execute("UPDATE vehicles SET status = 'active' WHERE id = %s", (VEHICLE,))
    inbox.telemetry(envelope())
    assert len(point(q)) == 1


def test_a_message_from_a_vehicle_marked_offline_brings_it_back_and_notifies(inbox, vehicles, q, listen):
    online = listen("fleet_vehicle_online")
    connected_at = now_ms() - 5000
    inbox.presence("client.connected", connected_at_ms=connected_at)
    inbox.presence("client.disconnected", reason="keepalive_timeout", connected_at_ms=connected_at)
    assert state(q)["online"] is False
    assert online.received() == [{"vehicle_id": VEHICLE}]
    inbox.telemetry(envelope())
    assert state(q)["online"] is True
    assert online.received() == [{"vehicle_id": VEHICLE}]
    inbox.telemetry(envelope(seq=2))
    assert online.received() == [], "no notification while it stays online"


def test_a_redelivery_racing_the_original_is_queued_without_waiting_and_stored_once(ingest_url, conn, vehicles, q):
    """Two broker connections carry the same QoS 1 message at once: neither INSERT waits for the other (the queue
    has no key they could meet on), and the drain stores the point once. Both copies are in one set: the set's
    plain INSERT (the point is later than the vehicle's latest) meets the second copy as a unique violation, and the
    set runs again with the conflict check on every row."""
    first, second = psycopg2.connect(ingest_url), psycopg2.connect(ingest_url)
    message = envelope({"lat": 48.1, "lon": 11.5, "heading_deg": 90.0, "speed_mps": 1.5, "battery_pct": 80,
                        "odometer_m": 12.0}, seq=1)
    try:
        Inbox(first).telemetry(message, drain=False)      # inside an open transaction: not committed
        Inbox(second).telemetry(message, drain=False)     # would block here if the two could conflict
        first.commit()
        second.commit()
    finally:
        first.close()
        second.close()
    assert q("SELECT count(*) AS n FROM ingest.telemetry_inbox")[0]["n"] == 2
    assert Inbox(None, conn).drain() == {"taken": 2, "in_sets": 2, "one_by_one": 0}
    assert len(point(q)) == 1
    assert q("SELECT count(*) AS n FROM rejected_messages")[0]["n"] == 0


def test_the_console_hears_of_every_stored_point_and_of_every_other_state_change(inbox, vehicles, conn, q, listen):
    # the set path's UPDATE announces its vehicles through vehicle_state's statement trigger, once per set; the
    # per-message path sends the notification itself (the trigger skips its update, sql/code/81_live_events.sql)
    changes = listen("fleet_vehicle_state")
    inbox.telemetry(envelope(seq=2))
    assert changes.received() == [{"vehicle_ids": [VEHICLE]}]
    inbox.telemetry(envelope(seq=1, ts=now_ms() - 60_000))  # older: only liveness moves, still a change
    assert changes.received() == [{"vehicle_ids": [VEHICLE]}]
    inbox.telemetry(envelope(), clientid="veh-unknown")
    assert changes.received() == []
    for vid in (OTHER_VEHICLE, VEHICLE):                    # one set, two vehicles: one notification
        inbox.telemetry(envelope(seq=now_ms()), clientid=vid, drain=False)
    assert inbox.drain() == {"taken": 2, "in_sets": 2, "one_by_one": 0}
    assert changes.received() == [{"vehicle_ids": [VEHICLE, OTHER_VEHICLE]}]
    batch = {"v": 1, "batch": [envelope(seq=now_ms()), envelope(seq=now_ms() + 1)]}
    inbox.telemetry(batch)        # per message, in one transaction: PostgreSQL folds the identical notifications
    assert changes.received() == [{"vehicle_ids": [VEHICLE]}]
    # a point that fails (and is parked) takes the whole set down the per-message path; the other vehicle's
    # point is still stored and announced, the failed one is not
    with fault(conn, "telemetry", "vehicle_id", OTHER_VEHICLE):
        for vid in (OTHER_VEHICLE, VEHICLE):
            inbox.telemetry(envelope(seq=now_ms()), clientid=vid, drain=False)
        assert inbox.drain() == {"taken": 2, "in_sets": 0, "one_by_one": 2}
    assert changes.received() == [{"vehicle_ids": [VEHICLE]}]
    assert [r["clientid"] for r in q("SELECT clientid FROM ingest.parked")] == [OTHER_VEHICLE]
