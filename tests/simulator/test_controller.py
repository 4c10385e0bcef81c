"""The onboard controller as the backend meets it: commands in, mission events and status out."""
from __future__ import annotations

import json
import random

import pytest

from fleetcore import envelope
from fleetcore.topics import Kind
from simulator.controller import Controller, parse_command
from simulator.faults import FaultConfig
from simulator.motion import Motion, offset

HOME = (48.1372, 11.5755)


def make_controller(battery: float = 87.0, faults: FaultConfig | None = None, time_scale: float = 10.0,
                    patrol: bool = False) -> Controller:
    motion = Motion(*HOME, battery_pct=battery)
    return Controller("veh-1", motion, rng=random.Random(3), faults=faults, time_scale=time_scale, patrol=patrol,
                      progress_every_s=1.0)


def cmd(command_type: str, data: dict, msg_id: str | None = None) -> bytes:
    return envelope.encode(envelope.command(command_type, data, msg_id=msg_id))


def dispatch(mission_id: str = "m-1", meters: float = 200.0, **extra) -> bytes:
    a = offset(*HOME, 0.0, meters / 2)
    b = offset(*a, 90.0, meters / 2)
    data = {"mission_id": mission_id, "name": "deliver", "priority": 0,
            "waypoints": [{"lat": a[0], "lon": a[1]}, {"lat": b[0], "lon": b[1], "name": "depot"}],
            "tasks": [], "timeout_s": 600, **extra}
    return cmd("mission.dispatch", data)


def events(outgoing) -> list[tuple[str, str | None]]:
    return [(o.data["event"], o.data.get("reason")) for o in outgoing if o.kind is Kind.MISSION]


def run_until_done(controller: Controller, limit: int = 500) -> list:
    out, now = [], 0.0
    for _ in range(limit):
        now += 1.0
        out.extend(controller.tick(1.0, now))
        if controller.mission is None:
            break
    return out


def test_accepts_progresses_and_completes():
    controller = make_controller()
    first = controller.handle_command(dispatch(), now=0.0)
    assert events(first) == [("accepted", None), ("progress", None)]
    rest = run_until_done(controller)
    mission_events = [o.data for o in rest if o.kind is Kind.MISSION]
    assert mission_events[-1]["event"] == "completed"
    progress = [e["progress"] for e in mission_events if e["event"] == "progress"]
    assert progress, "progress is reported while driving"
    percents = [p["percent"] for p in progress]
    assert percents == sorted(percents) and percents[0] >= 0 and percents[-1] <= 100
    etas = [p["eta_s"] for p in progress]
    assert etas[0] >= etas[-1] >= 0 and all(isinstance(e, int) for e in etas)
    assert any("depot" in p["step"] for p in progress)
    assert controller.stats.missions["completed"] == 1 and controller.mission is None


def test_every_tick_sends_telemetry_with_the_required_fields():
    controller = make_controller()
    out = controller.tick(1.0, 1.0)
    telemetry = [o.data for o in out if o.kind is Kind.TELEMETRY]
    assert len(telemetry) == 1
    assert {"lat", "lon", "heading_deg", "speed_mps", "battery_pct", "odometer_m"} <= set(telemetry[0])


def test_status_on_change_and_periodically_not_every_tick():
    controller = make_controller()
    controller.status_now(0.0)
    quiet = [o for t in range(1, 10) for o in controller.tick(1.0, float(t)) if o.kind is Kind.STATUS]
    assert quiet == []
    periodic = [o for o in controller.tick(1.0, 31.0) if o.kind is Kind.STATUS]
    assert len(periodic) == 1
    changed = controller.handle_command(cmd("emergency.stop", {"reason": "test"}), now=32.0)
    assert changed[0].kind is Kind.STATUS and changed[0].data["mode"] == "ESTOP" and changed[0].data["estop"]


def test_tasks_run_after_the_last_waypoint():
    controller = make_controller()
    controller.handle_command(dispatch(tasks=[{"type": "unload", "params": {"duration_s": 30}}]), now=0.0)
    out = run_until_done(controller)
    steps = [o.data["progress"]["step"] for o in out if o.kind is Kind.MISSION and o.data["event"] == "progress"]
    assert any(step.startswith("task 1/1: unload") for step in steps)
    assert events(out)[-1] == ("completed", None)


def test_mission_with_only_tasks_completes_in_place():
    controller = make_controller()
    data = {"mission_id": "m-t", "name": "scan", "waypoints": [], "tasks": [{"type": "scan", "params": {}}]}
    assert events(controller.handle_command(cmd("mission.dispatch", data), 0.0))[0] == ("accepted", None)
    assert events(run_until_done(controller))[-1] == ("completed", None)


@pytest.mark.parametrize("setup, reason", [
    (lambda c: c.handle_command(dispatch("other"), 0.0), "busy"),
    (lambda c: c.handle_command(cmd("emergency.stop", {"reason": "x"}), 0.0), "emergency_stop"),
    (lambda c: setattr(c.motion, "battery_pct", 12.0), "low_battery"),
    (lambda c: setattr(c, "faults", FaultConfig(reject_missions=True)), "fault_injected"),
])
def test_rejects_with_a_reason(setup, reason):
    controller = make_controller()
    setup(controller)
    assert events(controller.handle_command(dispatch("m-2"), 0.0)) == [("rejected", reason)]


def test_rejects_a_mission_the_battery_cannot_finish():
    controller = make_controller(battery=25.0)
    assert events(controller.handle_command(dispatch(meters=20_000), 0.0)) == [("rejected", "low_battery")]


def test_rejects_an_invalid_mission():
    controller = make_controller()
    bad = cmd("mission.dispatch", {"mission_id": "m-3", "waypoints": [{"lat": 200, "lon": 0}]})
    assert events(controller.handle_command(bad, 0.0)) == [("rejected", "invalid_mission")]


def test_a_repeated_msg_id_is_already_handled():
    controller = make_controller()
    payload = dispatch()
    assert events(controller.handle_command(payload, 0.0))[0] == ("accepted", None)
    assert controller.handle_command(payload, 1.0) == []
    assert controller.stats.duplicate_commands == 1
    stop = cmd("emergency.stop", {"reason": "x"}, msg_id="stop-1")
    controller.handle_command(stop, 2.0)
    controller.handle_command(cmd("emergency.release", {}), 3.0)
    assert controller.handle_command(stop, 4.0) == [] and not controller.estop, "a redelivered stop is not re-applied"


def test_the_same_mission_under_a_new_msg_id_is_not_started_twice():
    controller = make_controller()
    controller.handle_command(dispatch("m-1"), 0.0)
    assert controller.handle_command(dispatch("m-1"), 1.0) == []


def test_cancel_stops_the_mission_and_confirms():
    controller = make_controller()
    controller.handle_command(dispatch(), 0.0)
    controller.tick(1.0, 1.0)
    out = controller.handle_command(cmd("mission.cancel", {"mission_id": "m-1", "reason": "road closed"}), 2.0)
    assert events(out) == [("cancelled", "road closed")]
    assert controller.mission is None and controller.motion.arrived
    assert not [o for o in controller.tick(1.0, 3.0) if o.kind is Kind.MISSION]
    again = controller.handle_command(cmd("mission.cancel", {"mission_id": "m-1", "reason": "again"}), 4.0)
    assert again == [], "a finished mission is not cancelled twice"


def test_cancel_of_a_mission_never_received_is_confirmed():
    controller = make_controller()
    out = controller.handle_command(cmd("mission.cancel", {"mission_id": "lost", "reason": "r"}), 0.0)
    assert events(out) == [("cancelled", "r")]


def test_emergency_stop_halts_and_release_resumes_the_mission():
    controller = make_controller(time_scale=1.0)
    controller.handle_command(dispatch(meters=400), 0.0)
    for t in range(1, 15):
        controller.tick(1.0, float(t))
    controller.handle_command(cmd("emergency.stop", {"reason": "person on track"}), 15.0)
    for t in range(16, 30):
        out = controller.tick(1.0, float(t))
    position = (controller.motion.lat, controller.motion.lon)
    out = controller.tick(1.0, 30.0) + controller.tick(1.0, 31.0)
    assert (controller.motion.lat, controller.motion.lon) == position and controller.motion.speed_mps == 0
    halted = [o.data["progress"]["step"] for o in out if o.kind is Kind.MISSION]
    assert halted and all(step.startswith("halted") for step in halted), "progress keeps the mission alive"
    assert controller.mission is not None, "paused, not lost"
    status = controller.handle_command(cmd("emergency.release", {"reason": "clear"}), 32.0)
    assert status[0].data["mode"] == "AUTO" and not status[0].data["estop"]
    out = run_until_done(controller)
    assert events(out)[-1] == ("completed", None)


def test_fleet_wide_stop_without_a_mission_parks_the_vehicle():
    controller = make_controller(patrol=True)
    for t in range(1, 5):
        controller.tick(1.0, float(t))
    controller.handle_command(cmd("emergency.stop", {"reason": "fleet"}), 5.0)
    for t in range(6, 20):
        controller.tick(1.0, float(t))
    assert controller.motion.speed_mps == 0.0 and controller.mode == "ESTOP"


def test_fail_fault_fails_mid_mission():
    controller = make_controller(faults=FaultConfig(fail_missions_at=50.0))
    controller.handle_command(dispatch(meters=400), 0.0)
    out = run_until_done(controller)
    event, reason = events(out)[-1]
    assert event == "failed" and reason.startswith("fault_injected")
    last_progress = [o.data["progress"]["percent"] for o in out if o.kind is Kind.MISSION
                     and o.data["event"] == "progress"][-1]
    assert last_progress < 100


def test_config_update_applies_newer_versions_and_reports_them():
    controller = make_controller()
    out = controller.handle_command(cmd("config.update", {"version": 3, "config": {
        "telemetry_interval_s": 2, "cruise_speed_mps": 3.0, "custom": "kept"}}), 0.0)
    assert out[0].kind is Kind.STATUS
    assert out[0].data["config_version"] == 3 and out[0].data["config"]["custom"] == "kept"
    assert controller.telemetry_interval_s == 2.0 and controller.motion.profile.cruise_mps == 3.0
    older = controller.handle_command(cmd("config.update", {"version": 2, "config": {"cruise_speed_mps": 9}}), 1.0)
    assert older[0].data["config_version"] == 3 and controller.motion.profile.cruise_mps == 3.0


def test_bad_commands_are_counted_not_fatal():
    controller = make_controller()
    for payload in (b"not json", b"[]", b'{"v":2,"msg_id":"a","type":"emergency.stop","data":{}}',
                    b'{"v":1,"msg_id":"b","type":"self.destruct","data":{}}', "ünïcode".encode("latin-1")):
        assert controller.handle_command(payload, 0.0) == []
    assert controller.stats.bad_commands == 5 and controller.stats.commands == 0


def test_parse_command_accepts_what_the_backend_builds():
    built = envelope.command("mission.cancel", {"mission_id": "x", "reason": None})
    assert parse_command(json.dumps(built).encode()) == built


def test_idle_vehicle_low_on_battery_charges():
    controller = make_controller(battery=19.0, patrol=True)
    for t in range(1, 4):
        controller.tick(1.0, float(t))
    assert controller.motion.charging
    status = controller.status()
    assert status.data["charging"] is True


def test_shutting_down_fails_the_running_mission_once():
    controller = make_controller()
    controller.handle_command(dispatch("m-9"), now=0.0)
    controller.tick(1.0, 1.0)
    assert events(controller.shutdown()) == [("failed", "vehicle shut down")]
    assert controller.mission is None and controller.stats.missions["failed"] == 1
    assert controller.shutdown() == [], "nothing more to end"
    assert controller.handle_command(dispatch("m-9"), now=2.0) == [], "an ended mission is not started again"


def test_received_commands_are_logged_with_their_mission(caplog):
    controller = make_controller()
    with caplog.at_level("INFO", logger="simulator.controller"):
        controller.handle_command(dispatch("m-7"), now=0.0)
    [received] = [r for r in caplog.records if getattr(r, "event", None) == "command.received"]
    assert received.levelname == "INFO"
    assert (received.type, received.mission, received.vehicle) == ("mission.dispatch", "m-7", "veh-1")
