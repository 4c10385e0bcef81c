"""Motion: a vehicle drives its route plausibly — bounded speed, heading toward the target, battery draining."""
from __future__ import annotations

import random

import pytest

from simulator.motion import Motion, Profile, Waypoint, bearing_deg, distance_m, offset, patrol_route

START = (48.1372, 11.5755)


def test_distance_and_bearing_agree_with_offset():
    lat, lon = offset(*START, 90.0, 1000.0)
    assert distance_m(*START, lat, lon) == pytest.approx(1000.0, rel=1e-3)
    assert bearing_deg(*START, lat, lon) == pytest.approx(90.0, abs=0.1)


def test_drives_a_route_to_the_end_and_stops_there():
    a = Waypoint(*offset(*START, 0.0, 200.0))
    b = Waypoint(*offset(a.lat, a.lon, 90.0, 150.0))
    motion = Motion(*START, profile=Profile(cruise_mps=5.0))
    motion.follow([a, b])
    seconds, max_speed = 0, 0.0
    while not motion.arrived and seconds < 600:
        motion.step(1.0)
        max_speed = max(max_speed, motion.speed_mps)
        seconds += 1
    assert motion.arrived
    assert (motion.lat, motion.lon) == (b.lat, b.lon)
    assert motion.speed_mps == 0.0
    assert max_speed <= 5.0 + 1e-9
    assert 350 / 5.0 <= seconds <= 350 / 5.0 * 1.6, "about distance / cruise speed, plus acceleration and turns"
    assert motion.odometer_m == pytest.approx(350.0, rel=0.05)


def test_speed_changes_within_the_acceleration_limit_and_heading_turns_gradually():
    target = Waypoint(*offset(*START, 180.0, 500.0))
    motion = Motion(*START, heading_deg=0.0, profile=Profile(accel_mps2=1.0, turn_rate_dps=45.0))
    motion.follow([target])
    previous_speed, previous_heading = motion.speed_mps, motion.heading_deg
    for _ in range(20):
        motion.step(1.0)
        assert motion.speed_mps - previous_speed <= 1.0 + 1e-9
        turn = abs((motion.heading_deg - previous_heading + 540) % 360 - 180)
        assert turn <= 45.0 + 1e-6
        previous_speed, previous_heading = motion.speed_mps, motion.heading_deg
    assert motion.heading_deg == pytest.approx(180.0, abs=1.0)


def test_battery_drains_with_distance_and_a_little_while_standing():
    moving = Motion(*START, battery_pct=80.0)
    moving.follow([Waypoint(*offset(*START, 45.0, 2000.0))])
    for _ in range(600):
        moving.step(1.0)
    standing = Motion(*START, battery_pct=80.0)
    for _ in range(600):
        standing.step(1.0)
    assert 80.0 > standing.battery_pct > 79.9
    assert moving.battery_pct < 80.0 - 2.0 * 1.5 * 0.9  # about 2 km at 1.5 %/km


def test_charging_refills_and_does_not_move():
    motion = Motion(*START, battery_pct=50.0, charging=True)
    motion.follow([Waypoint(*offset(*START, 0.0, 100.0))])
    motion.step(60.0)
    assert motion.battery_pct == pytest.approx(52.0)
    assert (motion.lat, motion.lon) == START


def test_halted_vehicle_brakes_to_a_stop_and_stays():
    motion = Motion(*START)
    motion.follow([Waypoint(*offset(*START, 0.0, 1000.0))])
    for _ in range(10):
        motion.step(1.0)
    assert motion.speed_mps > 0
    motion.halted = True
    for _ in range(5):
        motion.step(1.0)
    position = (motion.lat, motion.lon)
    motion.step(1.0)
    assert motion.speed_mps == 0.0 and (motion.lat, motion.lon) == position


def test_a_large_time_step_still_follows_every_waypoint():
    points = [Waypoint(*offset(*START, 90.0 * i, 100.0)) for i in range(4)]
    motion = Motion(*START, profile=Profile(cruise_mps=10.0))
    motion.follow(points)
    for _ in range(60):
        motion.step(20.0)
        if motion.arrived:
            break
    assert motion.arrived and (motion.lat, motion.lon) == (points[-1].lat, points[-1].lon)


def test_remaining_distance_and_eta():
    a = Waypoint(*offset(*START, 0.0, 300.0))
    b = Waypoint(*offset(a.lat, a.lon, 0.0, 300.0), speed_mps=2.0)
    motion = Motion(*START, profile=Profile(cruise_mps=5.0))
    motion.follow([a, b])
    assert motion.remaining_m() == pytest.approx(600.0, rel=1e-3)
    assert motion.eta_s() == pytest.approx(120.0, rel=1e-2)


def test_patrol_route_is_a_closed_loop_near_home():
    route = patrol_route(random.Random(1), *START, radius_m=300.0)
    assert route[0] == route[-1]
    assert all(distance_m(*START, p.lat, p.lon) <= 301.0 for p in route)


def test_waypoint_from_dict_validates():
    assert Waypoint.from_dict({"lat": 1, "lon": 2, "name": "x"}).name == "x"
    with pytest.raises(ValueError):
        Waypoint.from_dict({"lat": 91, "lon": 0})
    with pytest.raises(KeyError):
        Waypoint.from_dict({"lat": 1})
