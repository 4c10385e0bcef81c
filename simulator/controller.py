"""The onboard controller of one simulated vehicle: commands in, mission events and status out, motion in between.

No networking here: ``handle_command`` takes a received payload, ``tick`` advances time, and both return the
messages the vehicle should send (``Outgoing``). ``simulator.vehicle`` puts them on the wire. Keeping the
protocol logic pure makes every rule testable on its own:

* a repeated command ``msg_id`` is already handled (QoS 1 may redeliver);
* ``mission.dispatch`` is accepted, or rejected with a reason: ``emergency_stop``, ``busy``, ``low_battery``,
  ``invalid_mission`` (or ``fault_injected``);
* an accepted mission drives its waypoints, then runs its tasks, sending ``progress`` {percent, step, eta_s},
  then ``completed`` (or ``failed`` when the fail fault triggers);
* ``mission.cancel`` stops the mission and confirms with ``cancelled`` (the backend repeats the command until that
  confirmation arrives; a repeat for a mission that already ended here needs nothing: the QoS 1 confirmation is on
  its way); ``mission.pause`` holds the vehicle where it is and confirms with ``paused``, ``mission.resume`` drives
  on and confirms with ``resumed``;
* ``emergency.stop`` halts the vehicle (the mission is held, not lost) until ``emergency.release``, and reports
  status ``estop: true`` at once — every time it is sent, as the backend re-sends it until it sees that status;
* ``config.update`` applies a newer config and reports its version in status;
* shutting down ends the mission honestly: ``failed`` with reason ``vehicle shut down`` (``shutdown``), so the
  backend frees the vehicle's queue at once instead of waiting for the mission's timeout.
"""
from __future__ import annotations

import json
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fleetcore import envelope
from fleetcore.logs import log_event
from fleetcore.topics import Kind
from simulator.faults import FaultConfig
from simulator.motion import Motion, Waypoint, distance_m, patrol_route

log = logging.getLogger("simulator.controller")

SW_VERSION = "fleet-sim/1.0"
SEEN_COMMANDS = 512          # msg_ids remembered for duplicate detection
FINISHED_MISSIONS = 64       # mission ids remembered after they ended
LOW_BATTERY_PCT = 15.0       # below this the vehicle reports a warning and takes no mission
CHARGE_BELOW_PCT = 20.0      # an idle vehicle below this parks and charges...
CHARGE_UNTIL_PCT = 90.0      # ...until this
RESERVE_PCT = 10.0           # battery that must be left after a mission for it to be accepted
SHUTDOWN_REASON = "vehicle shut down"

# What a simulated vehicle says it can do (docs/PROTOCOL.md, Capability sheet), sent with its registration. Its
# tasks just take their `duration_s`, so it names the usual warehouse ones.
TASK_TYPES = ("pick", "drop", "load", "unload", "scan", "inspect", "charge", "wait")
MAX_PAYLOAD_KG = 500.0
MAX_SPEED_MPS = 20.0
BATTERY_CAPACITY_WH = 2400.0

# Keys of config.update the simulator acts on; any other key is kept and reported back unchanged.
CONFIG_KEYS = {"telemetry_interval_s": (0.1, 3600.0), "status_interval_s": (1.0, 86400.0),
               "cruise_speed_mps": (0.1, 60.0)}


@dataclass
class Outgoing:
    """A message the vehicle should publish on its own ``kind`` topic."""
    kind: Kind
    data: dict[str, Any]


@dataclass
class ActiveMission:
    mission_id: str
    name: str
    route: list[Waypoint]
    tasks: list[dict[str, Any]]
    drive_total_m: float
    task_total_s: float
    task_index: int = 0
    task_elapsed_s: float = 0.0
    last_progress_at: float = float("-inf")
    last_leg: int = -1
    cancelled: bool = False
    paused: bool = False


@dataclass
class ControllerStats:
    """What the live display shows; plain counters, read racily by the display thread."""
    commands: int = 0
    duplicate_commands: int = 0
    bad_commands: int = 0
    missions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("accepted", "rejected", "completed", "failed", "cancelled"), 0))


class Controller:
    def __init__(self, vehicle_id: str, motion: Motion, *, rng: random.Random, faults: FaultConfig | None = None,
                 time_scale: float = 1.0, home: tuple[float, float] | None = None, patrol: bool = True,
                 progress_every_s: float = 2.0, status_every_s: float = 30.0) -> None:
        self.vehicle_id = vehicle_id
        self.motion = motion
        self.rng = rng
        self.faults = faults or FaultConfig()
        self.time_scale = time_scale
        self.home = home or (motion.lat, motion.lon)
        self.patrol = patrol
        self.progress_every_s = progress_every_s
        self.status_every_s = status_every_s
        self.estop = False
        self.estop_reason: str | None = None
        self.estop_at: float | None = None   # monotonic time the current stop was engaged
        self.mission: ActiveMission | None = None
        self.config_version = 0
        self.config: dict[str, Any] = {}
        self.telemetry_interval_s = 1.0
        self.stats = ControllerStats()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._finished: OrderedDict[str, str] = OrderedDict()
        self._status_due = True
        self._last_status_at = float("-inf")
        self._last_status: tuple | None = None

    # -- status -------------------------------------------------------------------------------------------
    def capabilities(self) -> dict[str, Any]:
        """The capability sheet reported with registration."""
        return {"task_types": list(TASK_TYPES), "max_payload_kg": MAX_PAYLOAD_KG, "max_speed_mps": MAX_SPEED_MPS,
                "battery_capacity_wh": BATTERY_CAPACITY_WH, "model": "fleet-sim"}

    @property
    def mode(self) -> str:
        return "ESTOP" if self.estop else "AUTO"

    @property
    def busy(self) -> bool:
        return self.mission is not None

    def errors(self) -> list[dict[str, str]]:
        errors = []
        if self.motion.battery_pct < LOW_BATTERY_PCT:
            errors.append({"code": "BATTERY_LOW", "level": "WARNING",
                           "message": f"battery at {self.motion.battery_pct:.0f} %"})
        if self.motion.battery_pct <= 0:
            errors.append({"code": "BATTERY_EMPTY", "level": "FATAL", "message": "battery empty, vehicle stopped"})
        return errors

    def status(self) -> Outgoing:
        data: dict[str, Any] = {
            "mode": self.mode, "battery_pct": round(self.motion.battery_pct, 1), "charging": self.motion.charging,
            "errors": self.errors(), "estop": self.estop, "sw_version": SW_VERSION,
            "config_version": self.config_version, "config": dict(self.config),
        }
        return Outgoing(Kind.STATUS, data)

    def _status_key(self) -> tuple:
        # What counts as "a change" worth an immediate status message; battery in 5 % steps.
        return (self.mode, self.motion.charging, int(self.motion.battery_pct // 5), tuple(
            e["code"] for e in self.errors()), self.config_version)

    def status_now(self, now: float) -> Outgoing:
        """Status to send right away (on connect); resets the periodic timer."""
        self._last_status_at = now
        self._last_status = self._status_key()
        self._status_due = False
        return self.status()

    # -- commands -----------------------------------------------------------------------------------------
    def handle_command(self, payload: bytes, now: float) -> list[Outgoing]:
        """React to one payload from ``cmd`` or ``_fleet/cmd``; bad or repeated commands produce nothing."""
        command = parse_command(payload)
        if command is None:
            self.stats.bad_commands += 1
            log_event(log, "command.malformed", logging.WARNING, vehicle=self.vehicle_id, size=len(payload))
            return []
        msg_id = command["msg_id"]
        if msg_id in self._seen:
            self.stats.duplicate_commands += 1
            log_event(log, "command.duplicate", vehicle=self.vehicle_id, msg_id=msg_id, type=command["type"])
            return []
        self._seen[msg_id] = None
        while len(self._seen) > SEEN_COMMANDS:
            self._seen.popitem(last=False)
        self.stats.commands += 1
        log_event(log, "command.received", vehicle=self.vehicle_id, type=command["type"], msg_id=msg_id,
                  **({"mission": command["data"]["mission_id"]} if "mission_id" in command["data"] else {}))
        handler = {
            "mission.dispatch": self._dispatch, "mission.cancel": self._cancel,
            "mission.pause": self._pause, "mission.resume": self._resume,
            "emergency.stop": self._emergency_stop, "emergency.release": self._emergency_release,
            "config.update": self._config_update,
        }[command["type"]]
        return handler(command["data"], now)

    def _mission_event(self, mission_id: str, event: str, **extra: Any) -> Outgoing:
        if event in self.stats.missions:
            self.stats.missions[event] += 1
        return Outgoing(Kind.MISSION, {"mission_id": mission_id, "event": event, **extra})

    def _dispatch(self, data: dict[str, Any], now: float) -> list[Outgoing]:
        mission_id = data.get("mission_id")
        if not isinstance(mission_id, str) or not mission_id:
            self.stats.bad_commands += 1
            return []
        if self.mission is not None and self.mission.mission_id == mission_id:
            return []  # the same mission sent again under a new msg_id: already running
        if mission_id in self._finished:
            return []
        reason = self._refusal(data)
        if reason:
            self._finish(mission_id, "rejected")
            log_event(log, "mission.rejected", vehicle=self.vehicle_id, mission=mission_id, reason=reason)
            return [self._mission_event(mission_id, "rejected", reason=reason)]
        route = [Waypoint.from_dict(w) for w in data.get("waypoints") or []]
        tasks = [t for t in data.get("tasks") or [] if isinstance(t, dict)]
        self.motion.charging = False
        self.motion.follow(route)
        self.mission = ActiveMission(mission_id, str(data.get("name") or ""), route, tasks,
                                     drive_total_m=self.motion.remaining_m(),
                                     task_total_s=sum(_task_duration(t) for t in tasks))
        log_event(log, "mission.accepted", vehicle=self.vehicle_id, mission=mission_id,
                  waypoints=len(route), tasks=len(tasks))
        return [self._mission_event(mission_id, "accepted"), self._progress(now)]

    def _refusal(self, data: dict[str, Any]) -> str | None:
        if self.faults.reject_missions:
            return "fault_injected"
        if self.estop:
            return "emergency_stop"
        if self.mission is not None:
            return "busy"
        try:
            route = [Waypoint.from_dict(w) for w in data.get("waypoints") or []]
        except (KeyError, TypeError, ValueError):
            return "invalid_mission"
        if not route and not data.get("tasks"):
            return "invalid_mission"
        need = self._energy_needed_pct(route)
        if self.motion.battery_pct < max(LOW_BATTERY_PCT, need + RESERVE_PCT):
            return "low_battery"
        return None

    def _energy_needed_pct(self, route: list[Waypoint]) -> float:
        meters, lat, lon = 0.0, self.motion.lat, self.motion.lon
        for point in route:
            meters += distance_m(lat, lon, point.lat, point.lon)
            lat, lon = point.lat, point.lon
        return meters / 1000.0 * self.motion.profile.drain_pct_per_km

    def _cancel(self, data: dict[str, Any], now: float) -> list[Outgoing]:
        mission_id = data.get("mission_id")
        reason = data.get("reason") or "cancelled by operator"
        if self.mission is not None and self.mission.mission_id == mission_id:
            self._end_mission("cancelled")
            log_event(log, "mission.cancelled", vehicle=self.vehicle_id, mission=mission_id)
            return [self._mission_event(mission_id, "cancelled", reason=reason)]
        if isinstance(mission_id, str) and mission_id and mission_id not in self._finished:
            # Never started here (e.g. the dispatch was lost): confirm so the backend can close it.
            self._finish(mission_id, "cancelled")
            return [self._mission_event(mission_id, "cancelled", reason=reason)]
        return []

    def _pause(self, data: dict[str, Any], now: float) -> list[Outgoing]:
        mission = self.mission
        if mission is None or mission.mission_id != data.get("mission_id"):
            return []
        mission.paused = True
        self.motion.halted = True
        log_event(log, "mission.paused", vehicle=self.vehicle_id, mission=mission.mission_id)
        return [self._mission_event(mission.mission_id, "paused")]

    def _resume(self, data: dict[str, Any], now: float) -> list[Outgoing]:
        mission = self.mission
        if mission is None or mission.mission_id != data.get("mission_id"):
            return []
        mission.paused = False
        self.motion.halted = self.estop
        log_event(log, "mission.resumed", vehicle=self.vehicle_id, mission=mission.mission_id)
        return [self._mission_event(mission.mission_id, "resumed")]

    def _emergency_stop(self, data: dict[str, Any], now: float) -> list[Outgoing]:
        if not self.estop:
            self.estop_at = now
        self.estop = True
        self.estop_reason = data.get("reason")
        self.motion.halted = True
        log_event(log, "estop.engaged", logging.WARNING, vehicle=self.vehicle_id, reason=self.estop_reason)
        return [self.status_now(now)]

    def _emergency_release(self, data: dict[str, Any], now: float) -> list[Outgoing]:
        if not self.estop:
            return [self.status_now(now)]
        self.estop = False
        self.estop_reason = None
        self.motion.halted = self.mission is not None and self.mission.paused
        log_event(log, "estop.released", vehicle=self.vehicle_id)
        return [self.status_now(now)]

    def _config_update(self, data: dict[str, Any], now: float) -> list[Outgoing]:
        version, config = data.get("version"), data.get("config")
        if not isinstance(version, int) or not isinstance(config, dict):
            self.stats.bad_commands += 1
            return []
        if version <= self.config_version:
            return [self.status_now(now)]  # already applied: report again so the backend sees it
        for key, (low, high) in CONFIG_KEYS.items():
            value = config.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high:
                self._apply(key, float(value))
        self.config_version = version
        self.config = dict(config)
        log_event(log, "config.applied", vehicle=self.vehicle_id, version=version)
        return [self.status_now(now)]

    def _apply(self, key: str, value: float) -> None:
        if key == "telemetry_interval_s":
            self.telemetry_interval_s = value
        elif key == "status_interval_s":
            self.status_every_s = value
        elif key == "cruise_speed_mps":
            self.motion.profile.cruise_mps = value

    def shutdown(self) -> list[Outgoing]:
        """The vehicle is being switched off: fail the mission it is running (docs/PROTOCOL.md, Mission
        lifecycle) rather than leave the backend waiting for an event that will not come."""
        if self.mission is None:
            return []
        mission_id = self.mission.mission_id
        self._end_mission("failed")
        log_event(log, "mission.failed", logging.WARNING, vehicle=self.vehicle_id, mission=mission_id,
                  reason=SHUTDOWN_REASON)
        return [self._mission_event(mission_id, "failed", reason=SHUTDOWN_REASON)]

    # -- time ---------------------------------------------------------------------------------------------
    def tick(self, wall_dt: float, now: float) -> list[Outgoing]:
        """Advance ``wall_dt`` real seconds (× time scale); returns telemetry plus any mission/status messages."""
        out: list[Outgoing] = []
        sim_dt = wall_dt * self.time_scale
        self._idle_behaviour()
        self.motion.step(sim_dt)
        if self.mission is not None:
            out.extend(self._advance_mission(sim_dt, now))
        out.insert(0, Outgoing(Kind.TELEMETRY, self.telemetry()))
        if self._status_key() != self._last_status or now - self._last_status_at >= self.status_every_s:
            out.append(self.status_now(now))
        return out

    def telemetry(self) -> dict[str, Any]:
        m = self.motion
        return {"lat": round(m.lat, 7), "lon": round(m.lon, 7), "heading_deg": round(m.heading_deg, 1),
                "speed_mps": round(m.speed_mps, 2), "battery_pct": round(m.battery_pct, 2),
                "odometer_m": round(m.odometer_m, 1)}

    def _idle_behaviour(self) -> None:
        if self.mission is not None or self.estop:
            return
        m = self.motion
        if m.charging:
            if m.battery_pct >= CHARGE_UNTIL_PCT:
                m.charging = False
            return
        if m.battery_pct < CHARGE_BELOW_PCT and m.speed_mps == 0:
            m.clear_route()
            m.charging = True
            return
        if self.patrol and m.arrived and m.battery_pct >= CHARGE_BELOW_PCT:
            m.follow(patrol_route(self.rng, *self.home))

    def _advance_mission(self, sim_dt: float, now: float) -> list[Outgoing]:
        mission = self.mission
        assert mission is not None
        if self.estop:
            if now - mission.last_progress_at >= self.progress_every_s:
                return [self._progress(now, step="halted: emergency stop")]
            return []
        if mission.paused:
            return []
        if self.motion.arrived and mission.task_index < len(mission.tasks):
            mission.task_elapsed_s += sim_dt
            while (mission.task_index < len(mission.tasks)
                   and mission.task_elapsed_s >= _task_duration(mission.tasks[mission.task_index])):
                mission.task_elapsed_s -= _task_duration(mission.tasks[mission.task_index])
                mission.task_index += 1
                mission.last_progress_at = float("-inf")  # report each finished task
        percent = self._percent()
        fail_at = self.faults.fail_missions_at
        if fail_at and percent >= fail_at:
            mission_id = mission.mission_id
            self._end_mission("failed")
            reason = "fault_injected: drive motor overheated"
            log_event(log, "mission.failed", logging.WARNING, vehicle=self.vehicle_id, mission=mission_id,
                      reason=reason)
            return [self._mission_event(mission_id, "failed", reason=reason)]
        if self.motion.arrived and mission.task_index >= len(mission.tasks):
            mission_id = mission.mission_id
            self._end_mission("completed")
            log_event(log, "mission.completed", vehicle=self.vehicle_id, mission=mission_id)
            return [self._mission_event(mission_id, "completed")]
        if self.motion.leg != mission.last_leg or now - mission.last_progress_at >= self.progress_every_s:
            return [self._progress(now)]
        return []

    def _percent(self) -> float:
        mission = self.mission
        assert mission is not None
        cruise = max(self.motion.profile.cruise_mps, 0.1)
        total = mission.drive_total_m / cruise + mission.task_total_s
        if total <= 0:
            return 100.0
        done_tasks = sum(_task_duration(t) for t in mission.tasks[:mission.task_index]) + mission.task_elapsed_s
        remaining_drive = self.motion.remaining_m() / cruise
        done = mission.drive_total_m / cruise - remaining_drive + min(done_tasks, mission.task_total_s)
        return max(0.0, min(100.0, 100.0 * done / total))

    def _progress(self, now: float, step: str | None = None) -> Outgoing:
        mission = self.mission
        assert mission is not None
        mission.last_progress_at = now
        mission.last_leg = self.motion.leg
        remaining_tasks = sum(_task_duration(t) for t in mission.tasks[mission.task_index:]) - mission.task_elapsed_s
        eta = (self.motion.eta_s() + max(remaining_tasks, 0.0)) / self.time_scale
        progress = {"percent": round(self._percent(), 1), "step": step or self._step_name(),
                    "eta_s": round(eta)}
        return self._mission_event(mission.mission_id, "progress", progress=progress)

    def _step_name(self) -> str:
        mission = self.mission
        assert mission is not None
        if not self.motion.arrived:
            leg = self.motion.leg
            name = mission.route[leg].name
            return f"driving to waypoint {leg + 1}/{len(mission.route)}" + (f" ({name})" if name else "")
        if mission.task_index < len(mission.tasks):
            task = mission.tasks[mission.task_index]
            return f"task {mission.task_index + 1}/{len(mission.tasks)}: {task.get('type', 'task')}"
        return "finishing"

    def _end_mission(self, outcome: str) -> None:
        assert self.mission is not None
        self._finish(self.mission.mission_id, outcome)
        self.mission = None
        self.motion.clear_route()

    def _finish(self, mission_id: str, outcome: str) -> None:
        self._finished[mission_id] = outcome
        while len(self._finished) > FINISHED_MISSIONS:
            self._finished.popitem(last=False)


def _task_duration(task: dict[str, Any]) -> float:
    params = task.get("params") if isinstance(task.get("params"), dict) else {}
    value = params.get("duration_s", 2.0)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else 2.0


def parse_command(payload: bytes) -> dict[str, Any] | None:
    """The command envelope (docs/PROTOCOL.md, Envelope and Commands) if ``payload`` is a well-formed command,
    else None."""
    try:
        command = json.loads(payload.decode("utf-8"))
    except ValueError:  # includes UnicodeDecodeError
        return None
    if not isinstance(command, dict) or command.get("v") != envelope.VERSION:
        return None
    if not isinstance(command.get("msg_id"), str) or not command["msg_id"]:
        return None
    if command.get("type") not in envelope.COMMAND_TYPES or not isinstance(command.get("data"), dict):
        return None
    return command
