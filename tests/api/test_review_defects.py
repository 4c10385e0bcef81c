"""Defects found in review, each pinned by a test that failed before its fix:

* a crafted pagination cursor (base64 of ``x|y``) answered 500 on telemetry history and reports → 400;
* ``fleet_ingest_rejected_total`` went down when retention pruned dead letters → it only grows;
* the mission report carried server times only → it carries the device times the timeline has;
* the latest state trusted a device time up to a day in the future: one such message froze a vehicle's position
  and health → a skewed time is not used for ordering;
* every item of an offline ``batch`` was flagged ``clock_skewed`` (old compared with the receive time) → a buffered
  item is skewed only when it claims to be from the future.
"""
from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from fleetcore import topics
from tests.support.database import rows
from tests.support.waiting import wait_until


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# invalid for every cursor: not base64 of anything we make, a time that is not one, a time without a zone
CRAFTED = ["garbage", b64("x|y"), b64("x"), b64("2026-01-01T00:00:00|x")]


@pytest.mark.parametrize("cursor", CRAFTED)
def test_a_crafted_cursor_is_a_400_everywhere(operator, enroll, cursor):
    vehicle = enroll(connect=False)
    for path, params in pages(vehicle.vehicle_id):
        response = operator.get(path, params={**params, "cursor": cursor})
        assert response.status_code == 400, (path, params, response.status_code, response.text)
        assert response.json()["code"] == "invalid_cursor"


def test_each_cursor_part_is_checked_for_its_kind(operator, enroll):
    vehicle = enroll(connect=False)
    status, report = pages(vehicle.vehicle_id)[2], pages(vehicle.vehicle_id)[3]
    for (path, params), cursor in ((status, b64("2026-01-01T00:00:00+00:00|not-a-number")),
                                   (status, b64("2026-01-01T00:00:00+00:00|99999999999999999999")),
                                   (report, b64("2026-01-01T00:00:00+00:00|not-a-uuid"))):
        response = operator.get(path, params={**params, "cursor": cursor})
        assert response.status_code == 400, (path, cursor, response.text)


def pages(vehicle_id: str) -> list[tuple[str, dict]]:
    window = {"from": (datetime.now(UTC) - timedelta(hours=1)).isoformat(), "to": datetime.now(UTC).isoformat()}
    return [(f"/api/v1/vehicles/{vehicle_id}/telemetry", window),
            (f"/api/v1/vehicles/{vehicle_id}/telemetry", {**window, "interval": "1m"}),
            (f"/api/v1/vehicles/{vehicle_id}/status", window),
            ("/api/v1/reports/missions", {})]


def rejected_totals(client) -> dict[str, int]:
    text = client.get("/metrics").text
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r'^fleet_ingest_rejected_total\{reason="([^"]+)"\} (\d+)$', text, re.M)}


def test_the_rejected_counter_never_goes_down_when_dead_letters_are_pruned(operator, anonymous, enroll, stack):
    vehicle = enroll()
    before = rejected_totals(anonymous).get("not_json", 0)
    vehicle.publish_raw(topics.vehicle_topic(vehicle.vehicle_id, topics.Kind.TELEMETRY), b"not json at all")
    wait_until(lambda: rejected_totals(anonymous).get("not_json", 0) == before + 1, message="counted once")
    # retention prunes dead letters (fleet_maintenance does it by age; here every row of this vehicle)
    rows(stack.database_url, "DELETE FROM rejected_messages WHERE clientid = %s RETURNING id", (vehicle.vehicle_id,))
    assert rejected_totals(anonymous).get("not_json", 0) == before + 1, "a counter never goes down"


def test_the_mission_report_carries_the_vehicles_device_times(operator, enroll):
    vehicle = enroll()
    mission = operator.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "timed",
                                                       "waypoints": [{"lat": 1, "lon": 2}]}).json()
    vehicle.wait_for_command("mission.dispatch")
    accepted_ms = 1_764_100_800_000
    vehicle.publish(topics.Kind.MISSION, {"mission_id": mission["id"], "event": "accepted"}, ts=accepted_ms)
    vehicle.publish(topics.Kind.MISSION, {"mission_id": mission["id"], "event": "completed"},
                    ts=accepted_ms + 42_000)
    wait_until(lambda: operator.get(f"/api/v1/missions/{mission['id']}").json()["state"] == "completed")
    [row] = operator.get("/api/v1/reports/missions", params={"vehicle_id": vehicle.vehicle_id}).json()["missions"]
    device = {state: datetime.fromisoformat(at) for state, at in row["device_timestamps"].items()}
    assert device == {"accepted": datetime.fromtimestamp(accepted_ms / 1000, UTC),
                      "completed": datetime.fromtimestamp(accepted_ms / 1000 + 42, UTC)}
    assert set(row["state_timestamps"]) == {"queued", "dispatched", "accepted", "completed"}, "server times stay"
    [attempt] = row["attempts"]
    assert datetime.fromisoformat(attempt["finished_device_time"]) == device["completed"]


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def test_a_future_dated_message_does_not_freeze_the_latest_state(operator, enroll):
    vehicle = enroll()
    later = _now_ms() + 23 * 3600 * 1000          # a bad clock, within the day the ingest still accepts
    vehicle.publish(topics.Kind.TELEMETRY, {"lat": 10.0, "lon": 10.0}, ts=later)
    vehicle.publish(topics.Kind.STATUS, {"mode": "MANUAL", "estop": False, "errors": []}, ts=later)
    wait_until(lambda: operator.get(f"/api/v1/vehicles/{vehicle.vehicle_id}").json()["health"]["mode"] == "MANUAL")
    vehicle.publish(topics.Kind.TELEMETRY, {"lat": 20.0, "lon": 20.0})
    vehicle.publish(topics.Kind.STATUS, {"mode": "AUTO", "estop": False, "errors": []})
    shown = wait_until(lambda: (v := operator.get(f"/api/v1/vehicles/{vehicle.vehicle_id}").json())
                       ["telemetry"]["lat"] == 20.0 and v["health"]["mode"] == "AUTO" and v,
                       message="the next message with a good clock moves the latest state on")
    assert shown["telemetry"]["lon"] == 20.0
    assert {p["lat"]: p["clock_skewed"] for p in rows_of(operator, vehicle.vehicle_id)} == {10.0: True, 20.0: False}


def test_an_offline_batch_is_not_flagged_clock_skewed(operator, enroll):
    vehicle = enroll()
    start = _now_ms() - 15 * 60 * 1000             # buffered for a quarter of an hour: old, not skewed
    items = [{"v": 1, "msg_id": f"b-{i}-{vehicle.vehicle_id}", "seq": 100 + i, "ts": start + i * 1000,
              "data": {"lat": 48.0 + i / 1000, "lon": 11.0}} for i in range(3)]
    items.append({"v": 1, "msg_id": f"b-future-{vehicle.vehicle_id}", "seq": 103, "ts": _now_ms() + 3600 * 1000,
                  "data": {"lat": 1.0, "lon": 1.0}})
    vehicle.publish_raw(topics.vehicle_topic(vehicle.vehicle_id, topics.Kind.TELEMETRY),
                        json.dumps({"v": 1, "batch": items}))
    points = wait_until(lambda: len(p := rows_of(operator, vehicle.vehicle_id)) == 4 and p)
    assert {p["lat"]: p["clock_skewed"] for p in points} == {48.0: False, 48.001: False, 48.002: False, 1.0: True}, \
        "buffered points are old, not skewed; one from the future is"


def rows_of(operator, vehicle_id: str) -> list[dict]:
    """The vehicle's stored telemetry, newest first (a window wide enough for the future-dated points)."""
    window = {"from": (datetime.now(UTC) - timedelta(hours=2)).isoformat(),
              "to": (datetime.now(UTC) + timedelta(days=1)).isoformat()}
    items = operator.get(f"/api/v1/vehicles/{vehicle_id}/telemetry", params=window).json()["items"]
    return sorted(items, key=lambda p: p["ts"], reverse=True)
