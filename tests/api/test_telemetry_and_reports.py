"""What operators read back: telemetry history (raw pages and per-interval averages), fleet-wide latest state,
health history, and the mission report — from data real vehicles sent over MQTT."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleetcore import topics
from tests.support.waiting import wait_until

WAYPOINTS = [{"lat": 48.1371, "lon": 11.5754}, {"lat": 48.1402, "lon": 11.5601}]


def _aligned_start() -> datetime:
    """Ten minutes ago, on a 30-second boundary (buckets are binned from 2000-01-01T00:00Z)."""
    start = datetime.now(UTC) - timedelta(minutes=10)
    return start.replace(second=start.second - start.second % 30, microsecond=0)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def test_history_pages_raw_points_and_averages_per_interval(operator, enroll):
    vehicle = enroll()
    start = _aligned_start()
    headings = [350.0, 10.0, 0.0, 90.0, 90.0, 90.0]
    for i, heading in enumerate(headings):          # two 30 s buckets of three points each
        vehicle.publish(topics.Kind.TELEMETRY, {"lat": 48.0 + i / 100, "lon": 11.0, "heading_deg": heading,
                                         "speed_mps": float(i), "battery_pct": 90.0 - i},
                        ts=_ms(start + timedelta(seconds=10 * i)), seq=i + 1)
    window = {"from": start.isoformat(), "to": (start + timedelta(minutes=1)).isoformat()}
    path = f"/api/v1/vehicles/{vehicle.vehicle_id}/telemetry"
    wait_until(lambda: len(operator.get(path, params=window).json()["items"]) == 6)

    first = operator.get(path, params={**window, "limit": 4}).json()
    assert [p["speed_mps"] for p in first["items"]] == [0, 1, 2, 3]
    assert all(p["ts"] and p["received_at"] for p in first["items"])
    second = operator.get(path, params={**window, "limit": 4, "cursor": first["next_cursor"]}).json()
    assert [p["speed_mps"] for p in second["items"]] == [4, 5] and second["next_cursor"] is None

    buckets = operator.get(path, params={**window, "interval": "30s"}).json()["items"]
    assert [b["samples"] for b in buckets] == [3, 3]
    assert abs(buckets[0]["lat"] - 48.01) < 1e-9 and abs(buckets[1]["speed_mps"] - 4.0) < 1e-9
    assert min(buckets[0]["heading_deg"], 360 - buckets[0]["heading_deg"]) < 1e-6, "350°, 10°, 0° average to 0°"
    assert abs(buckets[1]["heading_deg"] - 90) < 1e-6

    bad = operator.get(path, params={**window, "interval": "0s"})
    assert bad.status_code == 422
    assert operator.get(path, params={**window, "cursor": "garbage"}).status_code == 400


def test_fleet_wide_latest_state_in_one_call(operator, enroll):
    first, second = enroll(), enroll()
    first.telemetry(lat=10.0, lon=20.0, battery_pct=50.0)
    second.telemetry(lat=11.0, lon=21.0, battery_pct=60.0)

    def latest():
        items = operator.get("/api/v1/telemetry/latest", params={"fleet_id": operator.fleet}).json()["items"]
        return {i["vehicle_id"]: i for i in items}
    found = wait_until(lambda: (d := latest()) and all(d[v.vehicle_id]["telemetry"]["lat"] for v in (first, second))
                       and d)
    assert found[first.vehicle_id]["telemetry"]["lat"] == 10.0
    assert found[second.vehicle_id]["telemetry"]["battery_pct"] == 60.0
    assert found[first.vehicle_id]["online"] is True


def test_health_history_and_latest_health(operator, enroll):
    vehicle = enroll()
    now = datetime.now(UTC)
    vehicle.publish(topics.Kind.STATUS, {"mode": "AUTO", "battery_pct": 80.0, "errors": [], "estop": False},
                    ts=_ms(now - timedelta(seconds=2)), seq=1)
    vehicle.publish(topics.Kind.STATUS, {"mode": "ESTOP", "battery_pct": 79.0, "estop": True,
                                    "errors": [{"code": "LIDAR", "level": "FATAL", "message": "lidar offline"}]},
                    ts=_ms(now - timedelta(seconds=1)), seq=2)
    path = f"/api/v1/vehicles/{vehicle.vehicle_id}/status"
    first = operator.get(path)
    assert first.status_code == 200, first.text
    items = wait_until(lambda: len(i := operator.get(path).json()["items"]) == 2 and i)
    assert [i["mode"] for i in items] == ["AUTO", "ESTOP"]
    health = operator.get(f"/api/v1/vehicles/{vehicle.vehicle_id}").json()["health"]
    assert health["mode"] == "ESTOP" and health["estop"] is True and health["health"] == "FATAL"


def test_mission_report_counts_durations_and_failure_reasons(operator, enroll):
    vehicle = enroll()
    done = operator.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "done",
                                                    "waypoints": WAYPOINTS}).json()
    vehicle.wait_for_command("mission.dispatch")
    vehicle.mission_event(done["id"], "accepted")
    vehicle.mission_event(done["id"], "completed")
    wait_until(lambda: operator.get(f"/api/v1/missions/{done['id']}").json()["state"] == "completed")
    refused = operator.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "refused",
                                                       "waypoints": WAYPOINTS}).json()
    wait_until(lambda: any(m.json()["data"].get("mission_id") == refused["id"] for m in vehicle.history
                           if m.topic.endswith("/cmd")))
    vehicle.mission_event(refused["id"], "rejected", reason="low_battery")
    wait_until(lambda: operator.get(f"/api/v1/missions/{refused['id']}").json()["state"] == "rejected")

    report = operator.get("/api/v1/reports/missions", params={"vehicle_id": vehicle.vehicle_id}).json()
    assert report["summary"]["total"] == 2
    assert report["summary"]["by_state"] == {"completed": 1, "rejected": 1}
    assert report["summary"]["by_vehicle"] == [{"vehicle_id": vehicle.vehicle_id, "total": 2,
                                                "by_state": {"completed": 1, "rejected": 1}}]
    assert {"state": "rejected", "failure_reason": "low_battery", "n": 1} in report["summary"]["failure_reasons"]
    rows = {m["name"]: m for m in report["missions"]}
    assert rows["done"]["vehicle"]["id"] == vehicle.vehicle_id
    assert rows["done"]["durations"]["total_s"] >= rows["done"]["durations"]["execution_s"] >= 0
    assert rows["refused"]["failure_reason"] == "low_battery"

    only_rejected = operator.get("/api/v1/reports/missions", params={"vehicle_id": vehicle.vehicle_id,
                                                                     "state": "rejected"}).json()
    assert [m["name"] for m in only_rejected["missions"]] == ["refused"]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    nothing = operator.get("/api/v1/reports/missions", params={"vehicle_id": vehicle.vehicle_id, "from": later}).json()
    assert nothing["missions"] == [] and nothing["summary"]["total"] == 0

