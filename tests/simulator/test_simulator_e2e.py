"""The simulator against the real embedded stack (authsvc, broker, api, PostgreSQL).

Vehicles are created over the api, register over MQTT, stream, take missions, obey cancel / emergency stop /
config, survive dropped links with a batch upload, and every fault option ends up where the backend says it
should (rejected_messages with its reason, or stored once / flagged). Run with
``FLEET_STACK_COMPONENTS=authsvc,broker,api``.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import pytest

from fleetcore.topics import Kind
from simulator.api_client import OperatorApi
from simulator.credentials_store import CredentialsStore
from simulator.enrollment import ApiEnroller, load_csv_tokens, read_enrollment_csv
from simulator.faults import EXPECTED_REASON, FaultConfig
from simulator.fleet import Fleet, FleetOptions
from simulator.motion import offset
from simulator.vehicle import BrokerAddress
from tests.support.database import rows
from tests.support.operators import unique
from tests.support.required import require_tool
from tests.support.waiting import wait_until

TERMINAL = ("completed", "failed", "rejected", "cancelled", "timed_out", "expired")


@pytest.fixture
def operator_api(api_url, admin_password) -> OperatorApi:
    return OperatorApi(api_url, "admin", admin_password).login()


@pytest.fixture
def run_fleet(stack, operator_api, fleet, tmp_path):
    """Start N simulated vehicles of a new fleet (tokens from the api); every fleet is stopped afterwards."""
    started: list[Fleet] = []
    broker = BrokerAddress("127.0.0.1", stack.config.ports.mqtt)

    def _run(count: int = 2, *, state_dir=None, enroll: bool = True, **options) -> Fleet:
        prefix = unique("sim")
        ids = [f"{prefix}-{i}" for i in range(1, count + 1)] if "vehicle_ids" not in options \
            else options.pop("vehicle_ids")
        state_dir = state_dir or tmp_path / f"state-{len(started)}"
        enroller = ApiEnroller(operator_api, fleet)
        if enroll:
            enroller.prepare(CredentialsStore(state_dir), ids)
        defaults = {"workers": 2, "ramp_s": 0.0, "seed": 11, "time_scale": 20.0, "progress_every_s": 0.5}
        sim = Fleet(FleetOptions(vehicle_ids=ids, broker=broker, state_dir=state_dir, **(defaults | options)),
                    renew_token=enroller.new_token)
        sim.start()
        started.append(sim)
        wait_until(lambda: sim.snapshot().states.get("online", 0) == count, 30,
                   message=lambda: f"vehicles not online: {sim.snapshot().states} {sim.snapshot().failures}")
        return sim
    yield _run
    for sim in started:
        sim.stop()


def db(stack, sql: str, *params) -> list[dict]:
    return rows(stack.database_url, sql, params)


def mission_state(api: OperatorApi, mission_id: str) -> str:
    return api.get(f"/api/v1/missions/{mission_id}")["state"]


def create_mission(api: OperatorApi, vehicle_id: str, meters: float = 150.0, **extra) -> dict:
    position = wait_until(lambda: (t := api.get(f"/api/v1/vehicles/{vehicle_id}")["telemetry"]) and t["lat"] is not None
                          and t, 20, message="a first position")
    a = offset(position["lat"], position["lon"], 45.0, meters / 2)
    b = offset(*a, 135.0, meters / 2)
    body = {"vehicle_id": vehicle_id, "name": "e2e", "timeout_s": 300,
            "waypoints": [{"lat": a[0], "lon": a[1]}, {"lat": b[0], "lon": b[1], "name": "end"}], **extra}
    return api.post("/api/v1/missions", body, expect=(201,))


def test_vehicles_register_stream_and_go_offline_cleanly(stack, run_fleet, operator_api, tmp_path):
    sim = run_fleet(5, state_dir=tmp_path / "state", rate_hz=2.0)
    ids = list(sim.vehicles)
    for vehicle_id in ids:
        path = tmp_path / "state" / f"{vehicle_id}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert CredentialsStore(tmp_path / "state").load(vehicle_id).registered
    wait_until(lambda: all(r["n"] >= 3 for r in db(stack, "SELECT vehicle_id, count(*) AS n FROM telemetry "
                                                          "WHERE vehicle_id = ANY(%s) GROUP BY vehicle_id", ids))
               and len(db(stack, "SELECT DISTINCT vehicle_id FROM telemetry WHERE vehicle_id = ANY(%s)", ids)) == 5,
               20, message="telemetry rows of every vehicle")
    states = db(stack, "SELECT vehicle_id, online, connection_state, mode FROM vehicle_state "
                       "WHERE vehicle_id = ANY(%s)", ids)
    assert {(s["online"], s["connection_state"], s["mode"]) for s in states} == {(True, "ONLINE", "AUTO")}
    points = db(stack, "SELECT lat, lon, speed_mps, battery_pct FROM telemetry WHERE vehicle_id = %s", ids[0])
    assert all(-90 <= p["lat"] <= 90 and 0 <= p["battery_pct"] <= 100 and p["speed_mps"] >= 0 for p in points)
    assert db(stack, "SELECT count(*) AS n FROM rejected_messages WHERE clientid = ANY(%s)", ids)[0]["n"] == 0

    assert sim.stop() is True
    wait_until(lambda: {r["connection_state"] for r in db(
        stack, "SELECT connection_state FROM vehicle_state WHERE vehicle_id = ANY(%s)", ids)} == {"OFFLINE"}, 20,
        message="retained OFFLINE from a clean shutdown")


def test_a_restarted_simulator_connects_with_its_stored_secret(stack, run_fleet, tmp_path):
    first = run_fleet(2, state_dir=tmp_path / "keep")
    ids = list(first.vehicles)
    first.stop()
    second = run_fleet(2, state_dir=tmp_path / "keep", enroll=False, vehicle_ids=ids)
    assert second.snapshot().registered == 0, "no second registration: the device secret was reused"


def test_a_mission_runs_to_completion(stack, run_fleet, operator_api):
    sim = run_fleet(1)
    vehicle_id = next(iter(sim.vehicles))
    mission = create_mission(operator_api, vehicle_id, tasks=[{"type": "unload", "params": {"duration_s": 4}}])
    wait_until(lambda: mission_state(operator_api, mission["id"]) in TERMINAL, 60, message="mission finished")
    detail = operator_api.get(f"/api/v1/missions/{mission['id']}")
    assert detail["state"] == "completed", detail
    states = [e["to_state"] for e in detail["timeline"]]
    assert states[:2] == ["queued", "dispatched"] and states[-1] == "completed"
    assert "accepted" in states and "in_progress" in states
    progress = db(stack, "SELECT detail FROM mission_events WHERE mission_id = %s AND event = 'progress'",
                  mission["id"])
    assert progress, "progress events are recorded"
    assert sim.snapshot().missions["completed"] == 1


def test_cancel_and_emergency_stop_are_obeyed(stack, run_fleet, operator_api):
    sim = run_fleet(1, time_scale=1.0)
    vehicle_id = next(iter(sim.vehicles))
    mission = create_mission(operator_api, vehicle_id, meters=2000.0)
    wait_until(lambda: mission_state(operator_api, mission["id"]) == "in_progress", 20)
    answer = operator_api.post(f"/api/v1/missions/{mission['id']}/cancel", {"reason": "road closed"})
    assert answer["state"] in ("cancel_requested", "cancelled")
    wait_until(lambda: mission_state(operator_api, mission["id"]) == "cancelled", 20, message="cancel confirmed")
    assert sim.vehicle(vehicle_id).controller.mission is None

    stop = operator_api.post(f"/api/v1/vehicles/{vehicle_id}/emergency-stop", {"reason": "e2e test"})["stop"]
    wait_until(lambda: db(stack, "SELECT estop, mode FROM vehicle_state WHERE vehicle_id = %s", vehicle_id)[0]
               == {"estop": True, "mode": "ESTOP"}, 20, message="e-stop reported in status")
    wait_until(lambda: operator_api.get(f"/api/v1/emergency-stops/{stop['id']}")["acknowledged"] == 1, 20,
               message="the status report acknowledges the stop")
    held = create_mission(operator_api, vehicle_id)
    assert (held["state"], held["blocked_reason"]) == ("queued", "emergency_stop"), "never sent to a stopped vehicle"

    operator_api.post(f"/api/v1/vehicles/{vehicle_id}/emergency-release", {"reason": "clear"})
    wait_until(lambda: db(stack, "SELECT estop FROM vehicle_state WHERE vehicle_id = %s", vehicle_id)[0]["estop"]
               is False, 20, message="release reported in status")
    wait_until(lambda: mission_state(operator_api, held["id"]) in ("accepted", "in_progress", "completed"), 20,
               message="the held mission goes out once the stop is released")


def test_pause_and_resume_are_obeyed(stack, run_fleet, operator_api):
    sim = run_fleet(1, time_scale=1.0)
    vehicle_id = next(iter(sim.vehicles))
    controller = sim.vehicle(vehicle_id).controller
    mission = create_mission(operator_api, vehicle_id, meters=2000.0)
    wait_until(lambda: mission_state(operator_api, mission["id"]) == "in_progress", 20)
    paused = operator_api.post(f"/api/v1/missions/{mission['id']}/pause", {"reason": "forklift crossing"})
    assert paused["state"] == "paused"
    wait_until(lambda: controller.mission is not None and controller.mission.paused and controller.motion.halted, 20)
    wait_until(lambda: operator_api.get(f"/api/v1/missions/{mission['id']}")["pending_command"] is None, 20,
               message="the vehicle confirms the pause")
    resumed = operator_api.post(f"/api/v1/missions/{mission['id']}/resume", {"reason": "clear"})
    assert resumed["state"] == "in_progress"
    wait_until(lambda: not controller.motion.halted, 20)
    wait_until(lambda: operator_api.get(f"/api/v1/missions/{mission['id']}")["pending_command"] is None, 20,
               message="the vehicle confirms the resume")
    events = [e["event"] for e in operator_api.get(f"/api/v1/missions/{mission['id']}")["timeline"]]
    assert events.index("pause") < events.index("paused") < events.index("resume") < events.index("resumed")


def test_a_vehicle_connecting_after_a_fleet_stop_stops_within_a_second(stack, run_fleet, operator_api, fleet,
                                                                      tmp_path):
    stop = operator_api.post(f"/api/v1/fleets/{fleet}/emergency-stop", {"reason": "e2e: stop before connect"})
    try:
        sim = run_fleet(1)   # returns once the vehicle is online
        vehicle = next(iter(sim.vehicles.values()))
        wait_until(lambda: vehicle.controller.estop, 5, message="the stop reached the vehicle")
        assert vehicle.controller.estop_at - vehicle.online_since <= 1.0, "stopped within 1 s of connecting"
        wait_until(lambda: db(stack, "SELECT estop FROM vehicle_state WHERE vehicle_id = %s",
                              vehicle.vehicle_id)[0]["estop"] is True, 20, message="status estop: true")
        detail = wait_until(lambda: (d := operator_api.get(f"/api/v1/emergency-stops/{stop['stop']['id']}"))
                            ["acknowledged"] == 1 and d, 20, message="acknowledged")
        assert [c["vehicle_id"] for c in detail["commands"]] == [vehicle.vehicle_id]
    finally:
        operator_api.post(f"/api/v1/fleets/{fleet}/emergency-release", {"reason": "e2e: done"})
    wait_until(lambda: not vehicle.controller.estop, 20, message="released")


def test_a_revoked_vehicle_stops_and_says_why_instead_of_enrolling_again(stack, run_fleet, operator_api):
    sim = run_fleet(1, backoff_base_s=0.05, backoff_cap_s=0.2)
    vehicle = next(iter(sim.vehicles.values()))
    operator_api.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/revoke", {"reason": "lost in the field"})
    wait_until(lambda: vehicle.state.value == "failed", 60,
               message=lambda: f"state {vehicle.state}, last error {vehicle.last_error}")
    assert "revoked" in vehicle.last_error and "lost in the field" in vehicle.last_error
    assert operator_api.get(f"/api/v1/vehicles/{vehicle.vehicle_id}")["status"] == "revoked", "still revoked"
    issued = db(stack, "SELECT count(*) AS n FROM audit_log WHERE target_id = %s "
                       "AND action = 'vehicle.enrollment_token_issue'", vehicle.vehicle_id)[0]["n"]
    assert issued == 0, "the simulator did not ask for a new enrollment token"


def test_config_update_is_applied_and_reported(stack, run_fleet, operator_api):
    sim = run_fleet(1)
    vehicle_id = next(iter(sim.vehicles))
    operator_api.request("PUT", f"/api/v1/vehicles/{vehicle_id}/config",
                         json={"config": {"telemetry_interval_s": 0.5, "label": "e2e"}}, expect=(200, 202))
    wait_until(lambda: sim.vehicle(vehicle_id).controller.telemetry_interval_s == 0.5, 20)
    wait_until(lambda: db(stack, "SELECT reported_config_version AS v FROM vehicles WHERE id = %s",
                          vehicle_id)[0]["v"] == sim.vehicle(vehicle_id).controller.config_version >= 1, 20,
               message="applied config_version reported in status")


def test_offline_telemetry_is_uploaded_as_batches(stack, run_fleet):
    sim = run_fleet(2, rate_hz=5.0, backoff_base_s=1.5, faults=FaultConfig(drop_every_s=2.0))
    ids = list(sim.vehicles)
    wait_until(lambda: sim.snapshot().sent["batch"] >= 2 and sim.snapshot().faults.get("drop_connection", 0) >= 2,
               40, message=lambda: f"drops and batch uploads: {sim.snapshot()}")
    sim.options.faults.drop_every_s = 0.0  # no more drops: let every vehicle reconnect and upload
    wait_until(lambda: sim.snapshot().states.get("online", 0) == 2 and sim.snapshot().buffered == 0, 20)
    sim.stop()
    for vehicle in sim.vehicles.values():
        made = vehicle._seq[Kind.TELEMETRY]

        def stored(vehicle_id=vehicle.vehicle_id):
            return db(stack, "SELECT count(*) AS n, max(seq) AS top FROM telemetry WHERE vehicle_id = %s",
                      vehicle_id)[0]
        wait_until(lambda made=made: stored()["n"] == made, 20,
                   message=lambda made=made, vehicle_id=vehicle.vehicle_id:
                   f"{vehicle_id}: {stored()} stored of {made} made (nothing lost)")
    assert db(stack, "SELECT count(*) AS n FROM rejected_messages WHERE clientid = ANY(%s)", ids)[0]["n"] == 0


def test_each_fault_produces_the_expected_rejection(stack, run_fleet):
    faults = FaultConfig(malformed_rate=0.5, spoof_rate=0.3, duplicate_rate=0.3, out_of_order_rate=0.3,
                         clock_skew_s=-600.0)
    sim = run_fleet(2, rate_hz=10.0, faults=faults)
    ids = list(sim.vehicles)
    expected = set(EXPECTED_REASON.values()) | {"acl_denied", "vehicle_id_mismatch"}

    def reasons() -> set[str]:
        return {r["reason"] for r in db(stack, "SELECT DISTINCT reason FROM rejected_messages "
                                               "WHERE clientid = ANY(%s)", ids)}
    wait_until(lambda: expected <= reasons(), 40, message=lambda: f"reasons so far: {reasons()}")
    assert reasons() == expected, "nothing else was rejected"
    snapshot = sim.snapshot()
    assert snapshot.faults.get("duplicate", 0) and snapshot.faults.get("out_of_order", 0)
    counts = db(stack, "SELECT count(*) AS n, count(DISTINCT msg_id) AS distinct_ids, bool_and(clock_skewed) AS "
                       "skewed FROM telemetry WHERE vehicle_id = ANY(%s)", ids)[0]
    assert counts["n"] == counts["distinct_ids"], "a duplicate is stored once"
    assert counts["skewed"] is True, "a 10-minute clock skew is flagged on every row"
    sim.stop()
    for vehicle in sim.vehicles.values():
        latest = db(stack, "SELECT telemetry_seq FROM vehicle_state WHERE vehicle_id = %s", vehicle.vehicle_id)[0]
        top = db(stack, "SELECT max(seq) AS top FROM telemetry WHERE vehicle_id = %s", vehicle.vehicle_id)[0]
        assert latest["telemetry_seq"] == top["top"], "an out-of-order message did not move the state backwards"


def test_mission_faults_reject_and_fail(stack, run_fleet, operator_api):
    rejecting = run_fleet(1, faults=FaultConfig(reject_missions=True))
    vehicle_id = next(iter(rejecting.vehicles))
    mission = create_mission(operator_api, vehicle_id)
    wait_until(lambda: mission_state(operator_api, mission["id"]) == "rejected", 20)
    assert operator_api.get(f"/api/v1/missions/{mission['id']}")["failure_reason"] == "fault_injected"

    failing = run_fleet(1, faults=FaultConfig(fail_missions_at=40.0))
    vehicle_id = next(iter(failing.vehicles))
    mission = create_mission(operator_api, vehicle_id, meters=400.0)
    wait_until(lambda: mission_state(operator_api, mission["id"]) == "failed", 30)
    detail = operator_api.get(f"/api/v1/missions/{mission['id']}")
    assert detail["failure_reason"].startswith("fault_injected") and "in_progress" in [
        e["to_state"] for e in detail["timeline"]]


def test_the_acceptance_scenario_passes(stack, api_url, admin_password):
    env = dict(os.environ, FLEET_SIM_PASSWORD=admin_password)
    result = subprocess.run(
        [sys.executable, "-m", "simulator", "scenario", "acceptance", "--api", api_url, "--user", "admin",
         "--broker", f"mqtt://127.0.0.1:{stack.config.ports.mqtt}", "--timeout", "30"],
        env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "acceptance scenario passed: 8/8 steps" in result.stdout


def test_the_acceptance_scenario_fails_clearly_when_the_broker_is_unreachable(api_url, admin_password):
    env = dict(os.environ, FLEET_SIM_PASSWORD=admin_password)
    result = subprocess.run(
        [sys.executable, "-m", "simulator", "scenario", "acceptance", "--api", api_url, "--user", "admin",
         "--broker", "mqtt://127.0.0.1:9", "--timeout", "3"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "FAIL  1. vehicles are created over the api and register over MQTT" in result.stdout


def test_the_acceptance_scenario_passes_over_tls(stack, api_url, admin_password):
    """mqtts:// with --ca: the stack's broker has a TLS listener with a certificate from its local CA."""
    require_tool("openssl", "the embedded stack makes its TLS listener's certificates with it")
    ca = stack.tls_dir / "ca.pem"
    assert ca.exists(), "openssl is installed, yet the stack made no local CA"
    env = dict(os.environ, FLEET_SIM_PASSWORD=admin_password)
    result = subprocess.run(
        [sys.executable, "-m", "simulator", "scenario", "acceptance", "--api", api_url, "--user", "admin",
         "--broker", f"mqtts://127.0.0.1:{stack.config.ports.mqtt_tls}", "--ca", str(ca), "--timeout", "30",
         "--vehicles", "2"], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "acceptance scenario passed: 8/8 steps" in result.stdout


def test_the_cli_runs_vehicles_and_ctrl_c_stops_them_cleanly(stack, api_url, admin_password, tmp_path):
    fleet_id = unique("cli").lower()
    env = dict(os.environ, FLEET_SIM_PASSWORD=admin_password)
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "run", "--vehicles", "3", "--api", api_url, "--user", "admin",
         "--broker", f"mqtt://127.0.0.1:{stack.config.ports.mqtt}", "--fleet", fleet_id,
         "--state-dir", str(tmp_path / "cli-state"), "--plain"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ids = [f"{fleet_id}-000{i}" for i in (1, 2, 3)]
    try:
        wait_until(lambda: len(db(stack, "SELECT DISTINCT vehicle_id FROM telemetry WHERE vehicle_id = ANY(%s)",
                                  ids)) == 3, 30, message="telemetry from the 3 CLI vehicles")
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "stopped cleanly: 3 vehicles" in output
    wait_until(lambda: {r["connection_state"] for r in db(
        stack, "SELECT connection_state FROM vehicle_state WHERE vehicle_id = ANY(%s)", ids)} == {"OFFLINE"}, 20)


def test_the_cli_runs_vehicles_with_a_certificate_identity_over_mtls(stack, api_url, admin_password, tmp_path):
    """--mtls-broker: each vehicle registers with a CSR, stores its certificate (no device secret) and connects to
    the mTLS listener with it (docs/PROTOCOL.md, Certificate identity)."""
    require_tool("openssl", "the embedded stack makes its TLS listeners' broker certificate with it")
    fleet_id = unique("mtls").lower()
    ca = str(stack.tls_dir / "ca.pem")
    env = dict(os.environ, FLEET_SIM_PASSWORD=admin_password)
    state = tmp_path / "mtls-state"
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "run", "--vehicles", "2", "--api", api_url, "--user", "admin",
         "--broker", f"mqtts://127.0.0.1:{stack.config.ports.mqtt_tls}", "--ca", ca,
         "--mtls-broker", f"mqtts://127.0.0.1:{stack.config.ports.mqtt_mtls}", "--fleet", fleet_id,
         "--state-dir", str(state), "--plain"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ids = [f"{fleet_id}-000{i}" for i in (1, 2)]
    try:
        wait_until(lambda: len(db(stack, "SELECT DISTINCT vehicle_id FROM telemetry WHERE vehicle_id = ANY(%s)",
                                  ids)) == 2, 30, message="telemetry from the 2 certificate vehicles")
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert len(db(stack, "SELECT 1 FROM vehicle_certificates WHERE vehicle_id = ANY(%s) AND revoked_at IS NULL",
                  ids)) == 2
    assert db(stack, "SELECT 1 FROM device_credentials WHERE vehicle_id = ANY(%s)", ids) == [], "no secrets"
    saved = json.loads((state / f"{ids[0]}.json").read_text())
    assert saved["password"] is None and saved["certificate_pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert (state / f"{ids[0]}.key").stat().st_mode & 0o777 == 0o600


def test_vehicles_enrolled_in_bulk_register_from_the_csv(stack, fleet, tmp_path):
    csv_file = tmp_path / "bulk.csv"
    env = dict(os.environ, DATABASE_URL=stack.database_url,
               FLEET_DEVICE_SECRET_KEY=stack.secrets["FLEET_DEVICE_SECRET_KEY"])
    prefix = unique("bulk") + "-"
    subprocess.run([sys.executable, "-m", "fleetctl", "enroll-bulk", "--fleet", fleet, "--count", "3", "--prefix",
                    prefix, "--out", str(csv_file)], env=env, check=True, capture_output=True, text=True)
    store = CredentialsStore(tmp_path / "bulk-state")
    rows_ = read_enrollment_csv(csv_file)
    assert load_csv_tokens(store, rows_) == 3
    ids = [row.vehicle_id for row in rows_]
    sim = Fleet(FleetOptions(vehicle_ids=ids, broker=BrokerAddress("127.0.0.1", stack.config.ports.mqtt),
                             state_dir=tmp_path / "bulk-state", workers=1, ramp_s=0.0))
    sim.start()
    try:
        wait_until(lambda: sim.snapshot().states.get("online", 0) == 3, 30,
                   message=lambda: f"{sim.snapshot().states} {sim.snapshot().failures}")
        assert all(store.load(v).registered and store.load(v).enrollment_token is None for v in ids)
        wait_until(lambda: len(db(stack, "SELECT DISTINCT vehicle_id FROM telemetry WHERE vehicle_id = ANY(%s)",
                                  ids)) == 3, 20)
    finally:
        sim.stop()


def test_a_fleet_wide_emergency_stop_reaches_every_vehicle(stack, run_fleet, operator_api):
    sim = run_fleet(3)
    ids = list(sim.vehicles)

    def modes() -> set[tuple]:
        return {(r["mode"], r["estop"]) for r in db(stack, "SELECT mode, estop FROM vehicle_state "
                                                           "WHERE vehicle_id = ANY(%s)", ids)}
    try:
        operator_api.post("/api/v1/emergency-stop", {"reason": "e2e: fleet-wide"})
        wait_until(lambda: modes() == {("ESTOP", True)}, 20, message=lambda: f"modes: {modes()}")
    finally:
        operator_api.post("/api/v1/emergency-release", {"reason": "e2e: done"})
    wait_until(lambda: modes() == {("AUTO", False)}, 20, message=lambda: f"modes: {modes()}")


def test_stopping_the_simulator_fails_its_running_missions_so_the_queue_moves_on(stack, run_fleet, operator_api):
    sim = run_fleet(1, time_scale=1.0)
    vehicle_id = next(iter(sim.vehicles))
    running = create_mission(operator_api, vehicle_id, meters=2000.0)
    wait_until(lambda: mission_state(operator_api, running["id"]) == "in_progress", 20)
    waiting = create_mission(operator_api, vehicle_id)
    assert waiting["state"] == "queued", "one mission at a time"
    assert sim.stop() is True
    detail = wait_until(lambda: (d := operator_api.get(f"/api/v1/missions/{running['id']}"))["state"] == "failed"
                        and d, 10, message="the interrupted mission ends at once, not after its timeout")
    assert detail["failure_reason"] == "vehicle shut down"
    assert detail["timeline"][-1]["actor_type"] == "vehicle"
    restarted = run_fleet(1, state_dir=sim.options.state_dir, enroll=False, vehicle_ids=[vehicle_id],
                          time_scale=20.0)
    wait_until(lambda: mission_state(operator_api, waiting["id"]) in TERMINAL, 60,
               message="the queued mission is dispatched when the vehicle is back")
    assert mission_state(operator_api, waiting["id"]) == "completed"
    assert restarted.snapshot().missions["completed"] == 1


def test_a_vehicle_connected_elsewhere_is_not_driven_twice(stack, run_fleet, api_url, admin_password, fleet,
                                                           tmp_path):
    prefix = unique("dup").lower() + "-"
    first = run_fleet(1, vehicle_ids=[f"{prefix}0001"])
    env = dict(os.environ, FLEET_SIM_PASSWORD=admin_password)
    argv = [sys.executable, "-m", "simulator", "run", "--vehicles", "1", "--fleet", fleet, "--prefix", prefix,
            "--api", api_url, "--user", "admin", "--broker", f"mqtt://127.0.0.1:{stack.config.ports.mqtt}",
            "--state-dir", str(tmp_path / "elsewhere"), "--plain", "--duration", "1"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"{prefix}0001 is already connected (another simulator or a vehicle uses this id)" in result.stderr
    assert first.snapshot().disconnects == 0, "the vehicle kept its connection"
