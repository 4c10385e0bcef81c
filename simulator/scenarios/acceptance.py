"""``fleet-sim scenario acceptance``: the assignment's test procedure, end to end, against a running stack.

1. Vehicle telemetry over MQTT: vehicles are created over the api, register over MQTT and stream telemetry; the
   telemetry is stored. Unauthenticated clients are refused; a registered vehicle cannot publish as another
   vehicle (its topic, or a foreign ``vehicle_id`` in the payload) — nothing of that is stored.
2. Mission request (what Postman does): ``POST /api/v1/missions``; the backend forwards it over MQTT.
3. Mission response: the vehicle accepts over MQTT; a forged event from another vehicle changes nothing.
4. Mission progress: progress and completion are stored with timestamps; the timeline and the report show them.

Each step prints ``PASS`` or ``FAIL`` with the reason; the exit status is 1 on the first failure, 0 when all pass.
"""
from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fleetcore import missions as mission_states
from fleetcore.topics import Kind
from simulator.api_client import ApiError, OperatorApi
from simulator.arguments import UsageError, operator_api
from simulator.credentials_store import CredentialsStore
from simulator.enrollment import ApiEnroller
from simulator.fleet import Fleet, FleetOptions
from simulator.motion import offset
from simulator.scenarios.probe import ProbeClient, ProbeError, register
from simulator.vehicle import BrokerAddress

T = TypeVar("T")
# The states of a mission that goes well, in order; the timeline and the report must show each.
_PATH_TO_COMPLETION = (mission_states.QUEUED, mission_states.DISPATCHED, mission_states.ACCEPTED,
                       mission_states.IN_PROGRESS, mission_states.COMPLETED)
_ACCEPTED_OR_LATER = _PATH_TO_COMPLETION[2:]


class StepFailed(Exception):
    pass


def wait_for(what: str, predicate: Callable[[], T], timeout: float, interval: float = 0.25) -> T:
    """Poll until ``predicate`` returns something truthy; fail the step with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except (ApiError, OSError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() >= deadline:
            raise StepFailed(f"{what} (waited {timeout:.0f} s; last: {str(last)[:300]})")
        time.sleep(interval)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise StepFailed(message)


class Acceptance:
    def __init__(self, args: argparse.Namespace, api: OperatorApi, out=print) -> None:
        self.args = args
        self.api = api
        self.out = out
        self.broker = BrokerAddress.parse(args.broker, args.ca)
        self.fleet_id = args.fleet or f"acceptance-{secrets.token_hex(3)}"
        self.timeout = args.timeout
        self.enroller = ApiEnroller(api, self.fleet_id, model="fleet-sim-acceptance")
        self.vehicle_ids = [f"{self.fleet_id}-v{i}" for i in range(1, args.vehicles + 1)]
        self.probe_id = f"{self.fleet_id}-probe"
        self.fleet: Fleet | None = None
        self.probe: ProbeClient | None = None
        self.mission: dict[str, Any] | None = None
        self.passed = 0

    # -- running ------------------------------------------------------------------------------------------
    def run(self) -> int:
        steps = [
            ("vehicles are created over the api and register over MQTT", self.step_register),
            ("telemetry from registered vehicles is stored", self.step_telemetry_stored),
            ("unauthenticated MQTT clients are refused", self.step_unauthenticated_refused),
            ("a vehicle cannot publish as another vehicle", self.step_spoofing_rejected),
            ("a mission created over REST is dispatched over MQTT", self.step_mission_created),
            ("the vehicle accepts, progresses and completes it; forged events change nothing",
             self.step_mission_completed),
            ("the mission timeline has every state with server and device time", self.step_timeline),
            ("the mission report lists the mission with its vehicle", self.step_report),
        ]
        self.out(f"acceptance scenario: fleet {self.fleet_id}, {len(self.vehicle_ids)} vehicles, "
                 f"api {self.api.base_url}, broker {self.broker}")
        try:
            with tempfile.TemporaryDirectory(prefix="fleet-sim-acceptance-") as state_dir:
                self.state_dir = Path(state_dir)
                for number, (title, step) in enumerate(steps, start=1):
                    started = time.monotonic()
                    try:
                        step()
                    except (StepFailed, ProbeError, ApiError, OSError) as exc:
                        self.out(f"FAIL  {number}. {title}: {exc}")
                        return 1
                    self.passed += 1
                    self.out(f"PASS  {number}. {title} ({time.monotonic() - started:.1f} s)")
        finally:
            self._teardown()
        self.out(f"acceptance scenario passed: {self.passed}/{len(steps)} steps")
        return 0

    def _teardown(self) -> None:
        if self.probe is not None:
            self.probe.close()
        if self.fleet is not None:
            self.fleet.stop()

    # -- steps --------------------------------------------------------------------------------------------
    def step_register(self) -> None:
        self.enroller.ensure_fleet()
        store = CredentialsStore(self.state_dir)
        self.enroller.prepare(store, self.vehicle_ids)
        self.fleet = Fleet(FleetOptions(vehicle_ids=self.vehicle_ids, broker=self.broker, state_dir=self.state_dir,
                                        workers=2, time_scale=self.args.time_scale,
                                        progress_every_s=0.5, ramp_s=0.0, seed=7))
        self.fleet.start()
        wait_for("every vehicle online over MQTT",
                 lambda: self.fleet.snapshot().states.get("online", 0) == len(self.vehicle_ids), self.timeout)
        for vehicle_id in self.vehicle_ids:
            check(store.load(vehicle_id).registered, f"{vehicle_id} has no device secret after registering")
            wait_for(f"{vehicle_id} active and online in the api", lambda v=vehicle_id: (
                (doc := self.api.get(f"/api/v1/vehicles/{v}"))["status"] == "active"
                and doc["presence"]["online"]), self.timeout)

    def _telemetry(self, vehicle_id: str) -> list[dict[str, Any]]:
        return self.api.get(f"/api/v1/vehicles/{vehicle_id}/telemetry", params={"limit": 1000})["items"]

    def step_telemetry_stored(self) -> None:
        for vehicle_id in self.vehicle_ids:
            points = wait_for(f"3 telemetry rows of {vehicle_id}",
                              lambda v=vehicle_id: len(items := self._telemetry(v)) >= 3 and items, self.timeout)
            check(all(p["lat"] is not None and p["ts"] and p["received_at"] for p in points),
                  f"{vehicle_id}: telemetry rows without position or timestamps")

    def step_unauthenticated_refused(self) -> None:
        # Each probe is closed even when the step fails: an accepted one would keep its paho network thread.
        ghost = ProbeClient(self.broker, f"{self.fleet_id}-ghost")
        try:
            answer = ghost.connect(ghost.client_id, "not-a-registered-vehicle")
        finally:
            ghost.close()
        check(answer != "Success", "an unregistered vehicle was allowed to connect")
        self.out(f"      unregistered client refused: {answer}")
        token = self.enroller.new_token(self.probe_id)
        wrong = ProbeClient(self.broker, self.probe_id)
        try:
            answer = wrong.connect(self.probe_id, "wrong-" + token)
        finally:
            wrong.close()
        check(answer != "Success", "a wrong password was accepted")
        self.out(f"      wrong password refused: {answer}")
        self.probe_secret = register(self.broker, self.probe_id, token)

    def step_spoofing_rejected(self) -> None:
        victim = self.vehicle_ids[0]
        probe = self.probe = ProbeClient(self.broker, self.probe_id)
        check(probe.connect(self.probe_id, self.probe_secret) == "Success", "the registered probe cannot connect")
        lat, lon = 48.0, 11.0
        probe.publish_message(Kind.TELEMETRY, {"lat": lat, "lon": lon, "acceptance_marker": 1.0}, victim)
        probe.publish_message(Kind.TELEMETRY, {"lat": lat, "lon": lon, "acceptance_marker": 2.0,
                                               "vehicle_id": victim})
        probe.publish_message(Kind.TELEMETRY, {"lat": lat, "lon": lon, "acceptance_marker": 3.0})  # legitimate

        def markers(vehicle_id: str) -> set[float]:
            return {(p.get("extra") or {}).get("acceptance_marker") for p in self._telemetry(vehicle_id)} - {None}
        wait_for("the probe's own (legitimate) telemetry stored", lambda: 3.0 in markers(self.probe_id),
                 self.timeout)
        check(markers(victim) == set(), f"telemetry published on {victim}'s topic by another vehicle was stored")
        check(2.0 not in markers(self.probe_id), "telemetry carrying another vehicle's id was stored")

    def step_mission_created(self) -> None:
        vehicle_id = self.vehicle_ids[0]
        position = self.api.get(f"/api/v1/vehicles/{vehicle_id}")["telemetry"]
        a = offset(position["lat"], position["lon"], 0.0, 120.0)
        b = offset(*a, 90.0, 120.0)
        body = {"vehicle_id": vehicle_id, "name": "acceptance: deliver parcel", "priority": 5, "timeout_s": 300,
                "waypoints": [{"lat": a[0], "lon": a[1], "name": "pickup"}, {"lat": b[0], "lon": b[1],
                                                                              "name": "drop-off"}],
                "tasks": [{"type": "unload", "params": {"duration_s": 10}}]}
        created = self.api.post("/api/v1/missions", body, expect=(201,),
                                headers={"Idempotency-Key": str(uuid.uuid4())})
        self.mission = created
        # The vehicle may already have answered by the time the api responds.
        check(created["state"] in _PATH_TO_COMPLETION, f"unexpected state after create: {created['state']}")
        self.out(f"      mission {created['id']} created: {created['state']}")

    def _mission(self) -> dict[str, Any]:
        assert self.mission is not None
        return self.api.get(f"/api/v1/missions/{self.mission['id']}")

    def step_mission_completed(self) -> None:
        assert self.mission is not None and self.probe is not None
        wait_for("mission accepted or running", lambda: self._mission()["state"] in _ACCEPTED_OR_LATER, self.timeout)
        # Another (registered, authenticated) vehicle claims the mission is done: must change nothing.
        self.probe.publish_message(Kind.MISSION, {"mission_id": self.mission["id"], "event": "completed"})
        final = wait_for("mission completed", lambda: (m := self._mission())["state"] in mission_states.TERMINAL and m,
                         self.timeout)
        check(final["state"] == mission_states.COMPLETED,
              f"mission ended {final['state']}: {final.get('failure_reason')}")
        forged = [e for e in final["timeline"] if e.get("actor_id") == self.probe_id]
        check(not forged, f"an event from another vehicle was applied: {forged}")
        self.mission = final

    def step_timeline(self) -> None:
        mission = self._mission()
        states = [e["to_state"] for e in mission["timeline"]]
        for state in _PATH_TO_COMPLETION:
            check(state in states, f"timeline lacks {state}: {states}")
        vehicle_events = [e for e in mission["timeline"] if e["actor_type"] == "vehicle"]
        check(vehicle_events and all(e["server_time"] and e["device_time"] for e in vehicle_events),
              "vehicle events without server or device time")
        check(all(e["actor_id"] == mission["vehicle_id"] for e in vehicle_events),
              "a vehicle event from a different vehicle")
        check(mission["progress"]["percent"] is not None, "no progress recorded")
        check(bool(mission["accepted_at"] and mission["finished_at"]), "accepted_at / finished_at missing")

    def step_report(self) -> None:
        assert self.mission is not None
        report = self.api.get("/api/v1/reports/missions", params={"vehicle_id": self.vehicle_ids[0]})
        rows = [m for m in report["missions"] if str(m["id"]) == str(self.mission["id"])]
        check(len(rows) == 1, "the mission is missing from the report")
        row = rows[0]
        check(row["vehicle"]["id"] == self.vehicle_ids[0] and row["vehicle"]["fleet_id"] == self.fleet_id,
              f"wrong vehicle in the report: {row['vehicle']}")
        check(row["state"] == mission_states.COMPLETED, f"report says {row['state']}")
        for state in _PATH_TO_COMPLETION:
            check(state in row["state_timestamps"], f"report lacks the {state} timestamp")
        check(report["summary"]["by_state"].get(mission_states.COMPLETED, 0) >= 1,
              "summary does not count the completion")


def main(args: argparse.Namespace) -> int:
    if not args.user:
        raise UsageError("the acceptance scenario needs an operator: --user and --password")
    api = operator_api(args)
    assert api is not None
    try:
        return Acceptance(args, api, out=lambda line: print(line, flush=True)).run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
