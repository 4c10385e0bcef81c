"""Per-client bounds in the ingest (sql/code/10_ingest_common.sql, 20_telemetry.sql): dead letters per client and
broker minute are capped, the rest counted by reason and not stored; telemetry's extra fields must be numbers.
Sent exactly as the broker's pgsql actions send them (tests/sql/conftest.py's Inbox, tests/security/conftest.py),
into a fresh database."""
from __future__ import annotations

import pytest

from tests.sql.conftest import OTHER_VEHICLE, VEHICLE, envelope, now_ms
from tests.support.reliability import record

CAP = 5


def _stored(q, clientid: str) -> int:
    return q("SELECT count(*) AS n FROM rejected_messages WHERE clientid = %s", (clientid,))[0]["n"]


def _totals(q, reason: str) -> tuple[int, int]:
    rows = q("SELECT total, not_stored FROM ingest_rejected_totals WHERE reason = %s", (reason,))
    return (rows[0]["total"], rows[0]["not_stored"]) if rows else (0, 0)


def test_dead_letters_per_client_and_minute_are_capped_and_the_rest_counted(inbox, vehicles, q, conn):
    """Before: every bad message was a row kept 30 days (5,000 denied publishes, 5,000 rows)."""
    with conn.cursor() as cur:
        cur.execute("UPDATE ingest.settings SET max_rejected_per_minute = %s", (CAP,))
    minute = now_ms() // 60_000 * 60_000
    for i in range(CAP + 7):
        inbox.telemetry("{not json", received_at_ms=minute + 1_000 + i)
    assert _stored(q, VEHICLE) == CAP
    assert _totals(q, "not_json") == (CAP + 7, 7), "every reject is counted; those past the cap are not stored"

    inbox.telemetry("{not json", clientid=OTHER_VEHICLE, received_at_ms=minute + 2_000)
    assert _stored(q, OTHER_VEHICLE) == 1, "the cap is per client"
    inbox.telemetry("{not json", received_at_ms=minute + 60_000)
    assert _stored(q, VEHICLE) == CAP + 1, "and per minute"
    assert _totals(q, "not_json") == (CAP + 9, 7)
    record("security", "bad messages from one client within a minute (dead-letter cap lowered to 5)",
           messages=CAP + 7, stored=CAP, counted_not_stored=7)


def test_the_cap_holds_within_one_batch(inbox, vehicles, q, conn):
    with conn.cursor() as cur:
        cur.execute("UPDATE ingest.settings SET max_rejected_per_minute = %s", (CAP,))
    bad = [envelope({"lat": 91, "lon": 0}, seq=i) for i in range(CAP * 3)]
    inbox.telemetry({"v": 1, "batch": bad})
    assert _stored(q, VEHICLE) == CAP
    assert _totals(q, "invalid_value") == (CAP * 3, CAP * 2)


def test_the_default_cap_is_60_a_minute(q):
    assert q("SELECT max_rejected_per_minute AS n FROM ingest.settings")[0]["n"] == 60


@pytest.mark.parametrize("value", ["41.5 C", True, None, {"c": 41.5}, [41.5]])
def test_telemetry_extra_fields_must_be_numbers(inbox, vehicles, q, value):
    """docs/PROTOCOL.md: any field beyond the named ones is kept in extra, and is a number. Before: any JSON."""
    inbox.telemetry(envelope({"lat": 48.1, "lon": 11.5, "motor_temp_c": value}))
    [row] = q("SELECT reason, detail FROM rejected_messages")
    assert row["reason"] == "wrong_type" and row["detail"].startswith("data.motor_temp_c")
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 0


def test_numeric_extra_fields_are_kept(inbox, vehicles, q):
    inbox.telemetry(envelope({"lat": 48.1, "lon": 11.5, "motor_temp_c": 41.5, "load_kg": 120}))
    assert q("SELECT extra FROM telemetry")[0]["extra"] == {"motor_temp_c": 41.5, "load_kg": 120}
    assert q("SELECT count(*) AS n FROM rejected_messages")[0]["n"] == 0
