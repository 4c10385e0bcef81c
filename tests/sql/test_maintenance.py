"""Partitions ahead of time, a default partition as safety net, retention by dropping whole partitions."""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from tests.sql.conftest import envelope, now_ms


def partitions(q) -> list[str]:
    rows = q("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
             "WHERE i.inhparent = 'telemetry'::regclass ORDER BY 1")
    return [r["relname"] for r in rows]


def day_name(d: date) -> str:
    return "telemetry_p" + d.strftime("%Y%m%d")


def maintenance(conn) -> dict:
    with conn.cursor() as cur:
        cur.execute("SELECT fleet_maintenance()")
        return cur.fetchone()[0]


def test_migration_creates_yesterday_today_and_the_days_ahead(q):
    today = datetime.now(UTC).date()
    expected = {day_name(today + timedelta(days=n)) for n in range(-1, 4)}
    assert expected <= set(partitions(q))
    assert "telemetry_default" in partitions(q)


def test_maintenance_creates_more_days_ahead_when_configured_and_is_idempotent(conn, q):
    with conn.cursor() as cur:
        cur.execute("UPDATE ingest.settings SET partitions_ahead = 6")
    today = datetime.now(UTC).date()
    summary = maintenance(conn)
    assert set(summary["partitions_created"]) >= {day_name(today + timedelta(days=n)) for n in (5, 6)}
    assert maintenance(conn)["partitions_created"] == []


def test_points_outside_every_partition_land_in_the_default_and_move_out_later(conn, inbox, vehicles, q):
    old = now_ms() - 10 * 86_400_000                               # 10 days ago: no partition for that day
    message = envelope(ts=old, seq=1)
    inbox.telemetry({"v": 1, "batch": [message]})
    assert q("SELECT count(*) AS n FROM telemetry_default")[0]["n"] == 1
    summary = maintenance(conn)
    day = datetime.fromtimestamp(old / 1000, UTC).date()
    assert day_name(day) in summary["partitions_created"] and summary["rows_moved_from_default"] == 1
    assert q("SELECT count(*) AS n FROM telemetry_default")[0]["n"] == 0
    assert q(f"SELECT msg_id FROM {day_name(day)}")[0]["msg_id"] == message["msg_id"]
    inbox.telemetry({"v": 1, "batch": [message]})                  # a redelivery is still stored once
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 1


def test_retention_drops_whole_partitions_and_is_configurable(conn, inbox, vehicles, q):
    old = now_ms() - 10 * 86_400_000
    inbox.telemetry({"v": 1, "batch": [envelope(ts=old, seq=1)]})
    inbox.telemetry(envelope(seq=2))
    maintenance(conn)
    old_day = day_name(datetime.fromtimestamp(old / 1000, UTC).date())
    assert old_day in partitions(q)
    with conn.cursor() as cur:
        cur.execute("UPDATE ingest.settings SET telemetry_retention = '5 days'")
    summary = maintenance(conn)
    assert old_day in summary["partitions_dropped"] and old_day not in partitions(q)
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 1, "recent points stay"
    today = day_name(datetime.now(UTC).date())
    assert today in partitions(q)


def test_default_partition_rows_past_retention_are_pruned(conn, inbox, vehicles, q):
    with conn.cursor() as cur:
        cur.execute("INSERT INTO telemetry_default (vehicle_id, ts, received_at, msg_id, lat, lon) "
                    "VALUES ('veh-1', now() - interval '40 days', now(), 'ancient', 0, 0)")
    assert maintenance(conn)["default_rows_pruned"] == 1


def test_old_status_and_rejected_messages_are_pruned(conn, inbox, vehicles, q):
    with conn.cursor() as cur:
        cur.execute("INSERT INTO vehicle_status (vehicle_id, ts, received_at, msg_id, mode, health) VALUES "
                    "('veh-1', now() - interval '100 days', now(), 'old', 'AUTO', 'OK'), "
                    "('veh-1', now(), now(), 'new', 'AUTO', 'OK')")
        cur.execute("INSERT INTO rejected_messages (received_at, reason) VALUES "
                    "(now() - interval '31 days', 'not_json'), (now(), 'not_json')")
    summary = maintenance(conn)
    assert (summary["status_rows_pruned"], summary["rejected_rows_pruned"]) == (1, 1)


def test_ingest_metrics_counts_from_the_tables(conn, inbox, vehicles, q):
    inbox.telemetry(envelope())
    inbox.telemetry(b"nope", raw_b64="bm9wZQ==")
    rows = {(r["kind"], r["name"]): r["n"] for r in q("SELECT * FROM ingest_metrics()")}
    assert rows[("rejected", "not_json")] == 1 and rows[("stored", "telemetry")] == 1
    assert rows[("vehicles", "online")] == 1
