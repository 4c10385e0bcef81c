"""The simulator's vehicle on the HTTP fallback (simulator/http_link.py) against the embedded stack: registered over
MQTT once, then HTTP only — it shows online, drives a mission to the end, stops on an emergency stop and confirms it,
all through the same ingest and commands as over MQTT (docs/PROTOCOL.md → HTTP fallback)."""
from __future__ import annotations

import random
import threading

import pytest
import requests

from simulator.abortable import AbortableSession
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


def link_threads(vehicle_id: str) -> list[threading.Thread]:
    """The threads an HTTP link runs for ``vehicle_id`` (simulator/http_link.py names them so)."""
    return [t for t in threading.enumerate() if t.name == f"http-{vehicle_id}" and t.is_alive()]


def test_close_ends_the_long_poll_under_way_reports_the_mission_and_leaves_no_thread(enroll, operator, api_url,
                                                                                    caplog):
    """A long-poll blocks its thread for up to 25 s: close() must end it, let the runner report the running mission
    failed, and return only once both threads have ended (a thread that logs after its test wrote into pytest's
    closed capture streams)."""
    registered = enroll(connect=False)
    vehicle_id = registered.vehicle_id
    controller = Controller(vehicle_id, Motion(*HOME), rng=random.Random(6), patrol=False)
    vehicle = HttpVehicle(api_url, vehicle_id, registered.secret, controller)
    vehicle.start()
    try:
        far = offset(*HOME, 0.0, 2000.0)           # 400 s at cruise speed: still running when the vehicle stops
        response = operator.post("/api/v1/missions", json={
            "vehicle_id": vehicle_id, "name": "interrupted", "waypoints": [{"lat": far[0], "lon": far[1]}]})
        assert response.status_code == 201, response.text
        mission_id = response.json()["id"]
        wait_until(lambda: operator.get(f"/api/v1/missions/{mission_id}").json()["state"] == "in_progress",
                   timeout=20, message="the mission never started over HTTP")
        polls = vehicle.polls
        # the poll after the one that brought the mission: nothing is pending, so it waits on the api
        wait_until(lambda: vehicle.polls > polls, timeout=10, message="no long-poll under way")
        assert len(link_threads(vehicle_id)) == 2
        assert vehicle.error is None
    finally:
        with caplog.at_level("DEBUG", logger="simulator.http"):
            ended = vehicle.close(timeout=10)
    assert ended is True
    assert link_threads(vehicle_id) == [], "a thread of the link outlived close()"
    assert vehicle.error is None
    assert [r.getMessage() for r in caplog.records if r.name == "simulator.http"] == [], \
        "the aborted long-poll is no failure worth a log line"
    detail = operator.get(f"/api/v1/missions/{mission_id}").json()
    assert (detail["state"], detail["failure_reason"]) == ("failed", "vehicle shut down"), \
        "the runner still reported over its own connection"


def test_an_aborted_session_refuses_later_requests_too(api_url):
    """abort() also covers a request that starts after it (the thread had checked for stopping just before)."""
    session = AbortableSession()
    assert session.get(f"{api_url}/healthz", timeout=10).status_code == 200    # a kept-alive connection now
    session.abort()
    for _ in range(2):                    # the pooled connection, then a fresh one
        with pytest.raises(requests.RequestException):
            session.get(f"{api_url}/healthz", timeout=10)
    session.close()
