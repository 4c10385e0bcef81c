"""The simulator's vehicle on the HTTP fallback (simulator/http_link.py) against the embedded stack: registered over
MQTT once, then HTTP only — it shows online, drives a mission to the end, stops on an emergency stop and confirms it,
all through the same ingest and commands as over MQTT (docs/PROTOCOL.md → HTTP fallback)."""
from __future__ import annotations

import random

from simulator.controller import Controller
from simulator.http_link import HttpVehicle
from simulator.motion import Motion, offset
from tests.support.waiting import wait_until

HOME = (48.1372, 11.5755)


def test_a_simulated_vehicle_runs_a_mission_and_an_emergency_stop_over_http(enroll, operator, api_url):
    registered = enroll(connect=False)
    vehicle_id = registered.vehicle_id
    controller = Controller(vehicle_id, Motion(*HOME), rng=random.Random(5), time_scale=20.0, patrol=False,
                            progress_every_s=0.5)
    vehicle = HttpVehicle(api_url, vehicle_id, registered.secret, controller)
    vehicle.start()
    try:
        wait_until(lambda: operator.get(f"/api/v1/vehicles/{vehicle_id}").json()["presence"]["online"],
                   timeout=15, message="the vehicle never showed online over HTTP")
        a = offset(*HOME, 0.0, 100.0)
        response = operator.post("/api/v1/missions", json={
            "vehicle_id": vehicle_id, "name": "over http",
            "waypoints": [{"lat": a[0], "lon": a[1]}, {"lat": HOME[0], "lon": HOME[1], "name": "home"}]})
        assert response.status_code == 201, response.text
        mission_id = response.json()["id"]
        wait_until(lambda: operator.get(f"/api/v1/missions/{mission_id}").json()["state"] == "completed",
                   timeout=60, message="the mission never completed over HTTP")
        events = [e["event"] for e in operator.get(f"/api/v1/missions/{mission_id}").json()["timeline"]
                  if e["actor_type"] == "vehicle"]
        assert events[0] == "accepted" and events[-1] == "completed"

        stop = operator.post(f"/api/v1/vehicles/{vehicle_id}/emergency-stop", json={"reason": "http test"}).json()
        wait_until(lambda: operator.get(f"/api/v1/emergency-stops/{stop['stop']['id']}").json()["acknowledged"] == 1,
                   timeout=15, message="the stop was never confirmed over HTTP")
        assert controller.estop is True
        assert vehicle.error is None
    finally:
        vehicle.stop()
    assert vehicle.error is None
