"""Status: history, latest health with error levels, reported configuration, forward-only latest state."""
from __future__ import annotations

import pytest

from tests.sql.conftest import VEHICLE, envelope, now_ms


def state(q) -> dict:
    return q("SELECT * FROM vehicle_state WHERE vehicle_id = %s", (VEHICLE,))[0]


@pytest.mark.parametrize(("data", "health"), [
    ({"mode": "AUTO"}, "OK"),
    ({"mode": "AUTO", "errors": [{"code": "LIDAR_DIRTY", "level": "WARNING", "message": "clean me"}]}, "WARNING"),
    ({"mode": "MANUAL", "errors": [{"code": "W1", "level": "WARNING"}, {"code": "F1", "level": "FATAL"}]}, "FATAL"),
    ({"mode": "ESTOP", "estop": True}, "WARNING"),
    ({"mode": "SERVICE", "errors": []}, "OK"),
])
def test_health_summary_follows_the_worst_error_level(inbox, vehicles, q, data, health):
    inbox.status(envelope(data))
    [row] = q("SELECT mode, health, errors, estop FROM vehicle_status")
    assert row["health"] == health and row["mode"] == data["mode"]
    assert row["errors"] == data.get("errors", [])
    s = state(q)
    assert (s["health"], s["mode"], s["estop"]) == (health, data["mode"], data.get("estop", data["mode"] == "ESTOP"))


def test_status_history_latest_health_and_redelivery(inbox, vehicles, q):
    t = now_ms() - 10_000
    first = envelope({"mode": "AUTO", "battery_pct": 80, "charging": False, "sw_version": "1.2.0"}, seq=1, ts=t)
    inbox.status(first)
    inbox.status(first)                                                              # QoS 1 redelivery
    inbox.status(envelope({"mode": "SERVICE", "battery_pct": 79, "charging": True}, seq=2, ts=t + 2000))
    inbox.status(envelope({"mode": "MANUAL", "battery_pct": 81}, seq=3, ts=t + 1000))   # late, older
    rows = q("SELECT seq, mode FROM vehicle_status ORDER BY ts")
    assert [(r["seq"], r["mode"]) for r in rows] == [(1, "AUTO"), (3, "MANUAL"), (2, "SERVICE")]
    s = state(q)
    assert (s["mode"], s["charging"], s["battery_pct"], s["status_seq"]) == ("SERVICE", True, 79, 2)
    assert s["sw_version"] == "1.2.0", "a field the newest status omits keeps its last value"
    assert s["last_seen_at"] is not None


def test_status_carries_the_reported_configuration(inbox, vehicles, q):
    t = now_ms() - 10_000
    inbox.status(envelope({"mode": "AUTO", "config_version": 3, "config": {"max_speed_mps": 4}}, seq=1, ts=t))
    v = q("SELECT reported_config, reported_config_version FROM vehicles WHERE id = %s", (VEHICLE,))[0]
    assert v == {"reported_config": {"max_speed_mps": 4}, "reported_config_version": 3}
    inbox.status(envelope({"mode": "AUTO", "config_version": 2, "config": {"max_speed_mps": 9}}, seq=0, ts=t - 5))
    v = q("SELECT reported_config_version FROM vehicles WHERE id = %s", (VEHICLE,))[0]
    assert v["reported_config_version"] == 3, "an older status does not roll the reported config back"
    inbox.status(envelope({"mode": "AUTO", "config_version": 4}, seq=2, ts=t + 5))
    v = q("SELECT reported_config, reported_config_version FROM vehicles WHERE id = %s", (VEHICLE,))[0]
    assert v == {"reported_config": {"max_speed_mps": 4}, "reported_config_version": 4}
