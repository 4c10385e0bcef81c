"""Interop with an implementation nobody here wrote: the npm package vda-5050-lib's AgvController with its
VirtualAgvAdapter (tests/vda5050/virtual_agv.js) connects to our broker with its own credentials, and an operator
runs missions over the REST API (docs/VDA5050.md):

* a mission completes — the AGV drives the order, picks and drops — and the report shows it with timestamps;
* a second mission is cancelled mid-way (cancelOrder);
* an e-stop pauses the AGV (startPause) while the stop stays latched; the release lets it finish.

Every message of a run (both directions, as the AGV's MQTT client saw them) is logged to a file in the test's tmp
directory and printed when the test fails. The library validates what we send against its own copy of the 2.0
schemas and drops what fails, so a completed mission also proves that our orders pass it; the test checks every
message in the log against the official schemas as well. vda-5050-lib is installed on first use into var/node by
npm (tests/support/npm.py); without Node.js or npm the test fails under CI=true.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest

from fleetcore import topics, vda5050
from tests.support.database import rejected
from tests.support.npm import npm_package
from tests.support.vda5050 import ORIGIN, create_vda_vehicle
from tests.support.waiting import wait_until

VDA_LIB_VERSION = "1.4.0"
SCRIPT = Path(__file__).with_name("virtual_agv.js")
TIME_LAPSE = 20        # the virtual AGV drives 2 m/s × 20 and runs its actions 20 times faster
MAP_ID = "site"
PICK_DROP = [{"type": "pick", "params": {"stationType": "floor", "loadType": "EPAL", "duration": 1}},
             {"type": "drop", "params": {"stationType": "floor", "loadType": "EPAL", "duration": 1}}]


def north(metres: float) -> dict:
    return {"lat": ORIGIN[0] + math.degrees(metres / vda5050.EARTH_RADIUS_M), "lon": ORIGIN[1]}


@dataclass
class VirtualAgv:
    vehicle_id: str
    manufacturer: str
    serial_number: str
    log: Path
    process: subprocess.Popen

    def messages(self, direction: str | None = None, subtopic: topics.VdaSubtopic | None = None) -> list[dict]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []
        return [m for m in lines if (direction is None or m["dir"] == direction)
                and (subtopic is None or m["topic"] == topics.vda_topic(self.manufacturer, self.serial_number,
                                                                        subtopic))]

    def states(self) -> list[dict]:
        return [m["payload"] for m in self.messages("out", topics.VdaSubtopic.STATE)]

    def instant_actions(self) -> list[str]:
        """The types of the instant actions it received, in order (but the factsheetRequest of every connect)."""
        return [a["actionType"] for m in self.messages("in", topics.VdaSubtopic.INSTANT_ACTIONS)
                for a in m["payload"]["actions"] if a["actionType"] != "factsheetRequest"]


@pytest.fixture
def virtual_agv(request, operator, stack, tmp_path):
    modules = npm_package("vda-5050-lib", VDA_LIB_VERSION, "the independent VDA 5050 implementation runs on Node.js")
    vehicle_id, serial, secret = create_vda_vehicle(operator, stack)
    log = tmp_path / "vda5050-messages.jsonl"
    output = tmp_path / "virtual-agv.out"
    env = {**os.environ, "NODE_PATH": str(modules), "VDA_BROKER_URL": f"mqtt://127.0.0.1:{stack.config.ports.mqtt}",
           "VDA_VEHICLE_ID": vehicle_id, "VDA_SECRET": secret, "VDA_MANUFACTURER": "Acme",
           "VDA_SERIAL_NUMBER": serial, "VDA_MAP_ID": MAP_ID, "VDA_TIME_LAPSE": str(TIME_LAPSE),
           "VDA_LOG_FILE": str(log)}
    with output.open("w") as out:
        process = subprocess.Popen(["node", str(SCRIPT)], env=env, stdout=out, stderr=subprocess.STDOUT)
    agv = VirtualAgv(vehicle_id, "Acme", serial, log, process)
    try:
        wait_until(lambda: process.poll() is not None or "ready" in output.read_text(), 30,
                   message="the virtual AGV did not start")
        assert process.poll() is None, f"the virtual AGV exited:\n{output.read_text()}"
        wait_until(lambda: operator.get(f"/api/v1/vehicles/{vehicle_id}").json()["presence"]["online"],
                   message=f"{vehicle_id} never showed as online")
        yield agv
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            print(f"--- virtual AGV output ---\n{output.read_text()}")
            print(f"--- every message of the run ({log}) ---\n{log.read_text() if log.exists() else '(none)'}")


def mission(operator, agv: VirtualAgv, name: str, waypoints: list[dict], tasks: list[dict] | None = None) -> str:
    created = operator.post("/api/v1/missions", json={"vehicle_id": agv.vehicle_id, "name": name,
                                                      "waypoints": waypoints, "tasks": tasks or []})
    assert created.status_code == 201, created.text
    return created.json()["id"]


def mission_in(operator, mission_id: str, *states: str, timeout: float = 30) -> dict:
    return wait_until(lambda: (m := operator.get(f"/api/v1/missions/{mission_id}").json())["state"] in states and m,
                      timeout, message=lambda: f"mission {mission_id} never reached {states}: "
                                               f"{operator.get(f'/api/v1/missions/{mission_id}').json()['state']}")


def assert_every_message_follows_the_official_schemas(agv: VirtualAgv) -> None:
    schemas = {name: document for name, (document, _) in vda5050.schema_documents().items()}
    for message in agv.messages():
        subtopic = message["topic"].rsplit("/", 1)[1]
        jsonschema.validate(message["payload"], schemas[subtopic])


def test_mission_completes_and_the_report_shows_it(virtual_agv, operator, stack):
    mission_id = mission(operator, virtual_agv, "pick and drop", [north(20), north(40)], PICK_DROP)
    done = mission_in(operator, mission_id, "completed", "failed", "rejected")
    assert done["state"] == "completed", done

    [order] = [m["payload"] for m in virtual_agv.messages("in", topics.VdaSubtopic.ORDER)][:1]
    assert order["orderId"] == f"{mission_id}.1"
    final = virtual_agv.states()[-1]
    assert final["orderId"] == order["orderId"] and final["lastNodeId"] == order["nodes"][-1]["nodeId"]
    assert final["nodeStates"] == [] and final["edgeStates"] == []
    order_actions = {a["actionId"] for a in order["nodes"][-1]["actions"]}
    assert sorted((a["actionType"], a["actionStatus"]) for a in final["actionStates"]
                  if a["actionId"] in order_actions) == [("drop", "FINISHED"), ("pick", "FINISHED")]
    assert final["agvPosition"]["y"] == pytest.approx(40, abs=0.5)

    report = operator.get("/api/v1/reports/missions", params={"vehicle_id": virtual_agv.vehicle_id}).json()
    [row] = report["missions"]
    assert row["state"] == "completed" and row["vehicle"]["id"] == virtual_agv.vehicle_id
    stamps = row["state_timestamps"]
    assert stamps["dispatched"] <= stamps["accepted"] <= stamps["in_progress"] <= stamps["completed"], stamps
    # the vehicle's own clock: the state's timestamp of the messages that accepted and completed the order
    assert row["device_timestamps"]["accepted"] <= row["device_timestamps"]["completed"], row["device_timestamps"]
    assert row["durations"]["execution_s"] > 0

    view = operator.get(f"/api/v1/vehicles/{virtual_agv.vehicle_id}").json()
    assert view["telemetry"]["lat"] == pytest.approx(north(40)["lat"], abs=1e-6)
    assert view["health"]["health"] == "OK" and view["health"]["estop"] is False
    headers = [m["payload"]["headerId"] for m in virtual_agv.messages("in", topics.VdaSubtopic.ORDER)]
    assert headers == sorted(set(headers)), "headerId increases with every order sent"
    # asked for its factsheet when it connected: that is its capability sheet
    sheet = wait_until(lambda: operator.get(f"/api/v1/vehicles/{virtual_agv.vehicle_id}/capabilities").json()[
        "current"])
    assert sheet["source"] == "vda5050_factsheet" and {"pick", "drop"} <= set(sheet["task_types"])
    assert sheet["max_speed_mps"] == 2 and sheet["max_payload_kg"] == 50
    assert_every_message_follows_the_official_schemas(virtual_agv)
    assert rejected(stack.database_url, virtual_agv.vehicle_id) == []


def test_mission_cancelled_mid_way(virtual_agv, operator, stack):
    mission_id = mission(operator, virtual_agv, "long haul", [north(200), north(400)])
    mission_in(operator, mission_id, "in_progress")
    cancelled = operator.post(f"/api/v1/missions/{mission_id}/cancel", json={"reason": "blocked aisle"})
    assert cancelled.status_code == 200, cancelled.text
    done = mission_in(operator, mission_id, "cancelled", "completed", "failed")
    assert done["state"] == "cancelled", done

    assert set(virtual_agv.instant_actions()) == {"cancelOrder"}
    final = virtual_agv.states()[-1]
    assert final["nodeStates"] == [] and not final["driving"]
    assert final["agvPosition"]["y"] < 400 - 1, "it stopped before the end of the route"
    assert_every_message_follows_the_official_schemas(virtual_agv)
    assert rejected(stack.database_url, virtual_agv.vehicle_id) == []


def test_emergency_stop_pauses_the_agv_until_released(virtual_agv, operator, stack):
    mission_id = mission(operator, virtual_agv, "interrupted", [north(200), north(400)])
    mission_in(operator, mission_id, "in_progress")
    stop = operator.post(f"/api/v1/vehicles/{virtual_agv.vehicle_id}/emergency-stop", json={"reason": "person"})
    assert stop.status_code == 200, stop.text
    stop_id = stop.json()["stop"]["id"]

    wait_until(lambda: operator.get(f"/api/v1/vehicles/{virtual_agv.vehicle_id}").json()["health"]["estop"],
               message="the AGV never reported itself paused")
    wait_until(lambda: operator.get(f"/api/v1/emergency-stops/{stop_id}").json()["acknowledged"] == 1,
               message="the stop was never acknowledged")
    paused = next(s for s in reversed(virtual_agv.states()) if s["paused"])
    assert paused["driving"] is False and paused["nodeStates"], "paused mid-way, with nodes still to go"
    assert set(virtual_agv.instant_actions()) == {"startPause"}
    assert operator.get(f"/api/v1/missions/{mission_id}").json()["state"] == "in_progress"

    released = operator.post(f"/api/v1/vehicles/{virtual_agv.vehicle_id}/emergency-release", json={"reason": "clear"})
    assert released.status_code == 200, released.text
    done = mission_in(operator, mission_id, "completed", "failed", "cancelled")
    assert done["state"] == "completed", done
    sent = virtual_agv.instant_actions()
    assert set(sent) == {"startPause", "stopPause"} and sent.index("startPause") < sent.index("stopPause")
    assert operator.get(f"/api/v1/vehicles/{virtual_agv.vehicle_id}").json()["health"]["estop"] is False
    assert_every_message_follows_the_official_schemas(virtual_agv)
    assert rejected(stack.database_url, virtual_agv.vehicle_id) == []
