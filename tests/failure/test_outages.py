"""Faults the system must survive without losing a vehicle's data or an operator's mission. Each is bounded in time
and runs on loopback against the module's own stack."""
from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from collections import Counter

import pytest

from fleetcore import paths, topics
from fleetctl.ports import free_port
from fleetctl.procs import ChildProcess
from tests.support.database import rows
from tests.support.ingest_accounting import broker_counts, settle
from tests.support.reliability import record
from tests.support.vehicle import ConnectRefused, MqttVehicle
from tests.support.waiting import wait_until

WAYPOINTS = [{"lat": 48.1371, "lon": 11.5754}, {"lat": 48.1402, "lon": 11.5601}]


class Publisher(threading.Thread):
    """Publishes QoS 1 telemetry for one vehicle at a steady rate until stopped; remembers every message."""

    def __init__(self, vehicle: MqttVehicle, rate_hz: float) -> None:
        super().__init__(daemon=True)
        self.vehicle, self.period = vehicle, 1.0 / rate_hz
        self.sent: list[tuple[dict, object]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.period):
            self.sent.append(self.vehicle.publish_nowait(topics.Kind.TELEMETRY, {"lat": 48.1, "lon": 11.5}))

    def acked(self) -> set[str]:
        return {message["msg_id"] for message, info in self.sent if info.is_published()}

    def all_acked(self) -> bool:
        return all(info.is_published() for _, info in self.sent)


def _create_mission(admin, vehicle: MqttVehicle, name: str) -> dict:
    return admin.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": name,
                                                "waypoints": WAYPOINTS}).json()


def _reconnect_and_receive_a_mission(vehicle: MqttVehicle) -> str:
    """Connect an offline vehicle again; the id of the first mission it is sent."""
    vehicle.connect(vehicle.secret)
    vehicle.subscribe_commands()
    return vehicle.wait_for_command("mission.dispatch", timeout=20)["data"]["mission_id"]


def _stored(stack, vehicle_ids: list[str]) -> dict[str, int]:
    found = rows(stack.database_url, "SELECT msg_id, count(*) AS n FROM telemetry WHERE vehicle_id = ANY(%s) "
                 "GROUP BY msg_id", (vehicle_ids,))
    return {r["msg_id"]: r["n"] for r in found}


def test_postgres_down_10s_loses_no_acknowledged_message(own_stack, connected_vehicles):
    vehicles = connected_vehicles(50)
    broker_before = broker_counts(own_stack)
    publishers = [Publisher(v, rate_hz=2) for v in vehicles]
    for publisher in publishers:
        publisher.start()
    wait_until(lambda: sum(len(p.acked()) for p in publishers) >= 100, timeout=30)
    own_stack.postgres.stop()
    outage_ends = time.monotonic() + 10
    try:
        wait_until(lambda: time.monotonic() >= outage_ends, timeout=15, interval=0.5)   # the outage itself
    finally:
        own_stack.postgres.start()
    wait_until(lambda: sum(len(p.acked()) for p in publishers) >= 200, timeout=60)
    for publisher in publishers:
        publisher.halt.set()
    for publisher in publishers:
        publisher.join(5)
    wait_until(lambda: all(p.all_acked() for p in publishers), timeout=120,
               message="some messages were never acknowledged after the database came back")
    acked = set().union(*(p.acked() for p in publishers))
    # the broker retries a batch whose connection was lost: each message is stored once or dead-lettered, none parked
    figures = settle(own_stack, {m: p.vehicle.vehicle_id for p in publishers for m in p.acked()}, timeout=120)
    stored = _stored(own_stack, [v.vehicle_id for v in vehicles])
    lost = acked - stored.keys()
    broker = broker_counts(own_stack) - broker_before
    record("fault", "PostgreSQL stopped for 10 s while 50 vehicles publish QoS 1 at 2 Hz", vehicles=len(vehicles),
           sent=figures["sent"], stored=figures["stored"], dead_lettered=figures["dead_lettered"], lost=len(lost),
           duplicates=sum(n - 1 for n in stored.values()), broker_failed=broker["failed"],
           broker_dropped=broker["dropped"])
    record("load", "50 vehicles publishing QoS 1 telemetry at 2 Hz, through a 10 s database outage",
           messages_acknowledged=len(acked), stored_exactly_once=sum(1 for n in stored.values() if n == 1),
           lost=len(lost), vehicles_disconnected=sum(not v.connected for v in vehicles))
    assert lost == set(), f"{len(lost)} acknowledged messages were lost"
    assert max(stored.values()) == 1, "a message was stored twice"
    assert figures["dead_lettered"] == 0 and broker == Counter(), f"dead letters or broker failures: {broker}"
    assert all(v.connected for v in vehicles)


def test_authsvc_down_fails_closed_for_new_connections_but_connected_vehicles_keep_publishing(
        own_stack, connected_vehicles):
    connected, waiting = connected_vehicles(2)
    waiting.close()
    own_stack.stop_component("authsvc")
    try:
        with pytest.raises(ConnectRefused):
            MqttVehicle("127.0.0.1", own_stack.config.ports.mqtt, waiting.vehicle_id).connect(waiting.secret)
        message = connected.telemetry()
        wait_until(lambda: _stored(own_stack, [connected.vehicle_id]).get(message["msg_id"]) == 1,
                   message="a connected vehicle's telemetry was not stored while authsvc was down")
    finally:
        own_stack.start_component("authsvc")
    waiting.connect(waiting.secret)
    assert waiting.connected
    record("fault", "authsvc stopped", new_connections="refused (fail closed)", connected_vehicles="kept publishing",
           after_restart="connections accepted")


def test_api_restart_mid_mission_loses_no_vehicle_event_and_the_worker_keeps_dispatching(own_stack, own_admin,
                                                                                         connected_vehicles):
    [vehicle] = connected_vehicles(1)
    first, second = (_create_mission(own_admin, vehicle, name) for name in ("survive", "next in line"))
    assert vehicle.wait_for_command("mission.dispatch")["data"]["mission_id"] == first["id"]
    assert second["state"] == "queued"
    vehicle.mission_event(first["id"], "accepted")
    own_stack.stop_component("api")
    sent_while_down = ["progress", "completed"]
    try:
        vehicle.mission_event(first["id"], "progress", progress={"percent": 40, "step": "leg 1", "eta_s": 60})
        vehicle.mission_event(first["id"], "completed")
        # The worker is its own process: the vehicle is free again, so it gets the next mission without the api.
        command = vehicle.wait_for_command("mission.dispatch", timeout=20)
        assert command["data"]["mission_id"] == second["id"]
    finally:
        own_stack.start_component("api")
    own_admin.login("admin", own_stack.secrets["FLEET_ADMIN_PASSWORD"])
    wait_until(lambda: own_admin.get(f"/api/v1/missions/{first['id']}").json()["state"] == "completed")
    events = [e["event"] for e in own_admin.get(f"/api/v1/missions/{first['id']}").json()["timeline"]]
    assert events == ["created", "dispatch", "accepted", *sent_while_down]
    assert own_admin.get(f"/api/v1/missions/{second['id']}").json()["state"] == "dispatched"
    record("fault", "api stopped mid-mission", vehicle_events_sent_while_down=len(sent_while_down),
           vehicle_events_lost=sum(event not in events for event in sent_while_down),
           next_mission="dispatched by the worker while the api was down")


def test_worker_down_new_missions_still_go_out_at_once_and_queued_ones_wait_for_it(own_stack, own_admin,
                                                                                 connected_vehicles):
    online, offline = connected_vehicles(2)
    offline.close()
    own_stack.stop_component("worker")
    try:
        # Dispatching a new mission to an online, idle vehicle is request work: the api does it itself.
        mission = _create_mission(own_admin, online, "no worker")
        assert mission["state"] == "dispatched"
        assert online.wait_for_command("mission.dispatch")["data"]["mission_id"] == mission["id"]
        waiting = _create_mission(own_admin, offline, "queued")
        assert waiting["state"] == "queued"
    finally:
        own_stack.start_component("worker")
    # Reacting to a vehicle that comes online is the worker's.
    assert _reconnect_and_receive_a_mission(offline) == waiting["id"]
    record("fault", "worker stopped", new_missions="dispatched at once by the api",
           queued_missions="dispatched once the worker was back")


def test_worker_down_telemetry_waits_in_the_queue_and_is_stored_once_when_it_returns(own_stack, connected_vehicles):
    vehicles = connected_vehicles(5)
    ids = [v.vehicle_id for v in vehicles]
    own_stack.stop_component("worker")
    try:
        publishers = [Publisher(v, rate_hz=5) for v in vehicles]
        for publisher in publishers:
            publisher.start()
        wait_until(lambda: sum(len(p.acked()) for p in publishers) >= 60, timeout=30)
        for publisher in publishers:
            publisher.halt.set()
            publisher.join()
        wait_until(lambda: all(p.all_acked() for p in publishers), timeout=30, message="PUBACKs outstanding")
        acked = set().union(*(p.acked() for p in publishers))
        wait_until(lambda: rows(own_stack.database_url, "SELECT queued FROM ingest.telemetry_queue_summary()")
                   [0]["queued"] == len(acked), timeout=30, message="the broker did not queue every message")
        assert _stored(own_stack, ids) == {}, "nothing is applied without the worker"
    finally:
        own_stack.start_component("worker")
    wait_until(lambda: len(_stored(own_stack, ids)) == len(acked), timeout=60,
               message="the queued telemetry was not applied")
    stored = _stored(own_stack, ids)
    assert set(stored) == acked and set(stored.values()) == {1}
    assert rows(own_stack.database_url, "SELECT queued FROM ingest.telemetry_queue_summary()")[0]["queued"] == 0
    record("fault", "worker stopped while vehicles publish telemetry", sent=len(acked), queued=len(acked),
           stored=len(stored), duplicates=0, lost=len(acked) - len(stored))


def test_a_standby_worker_takes_over_when_the_leader_stops(own_stack, own_admin, connected_vehicles):
    standby_url = f"http://127.0.0.1:{free_port()}"
    standby = ChildProcess("worker-2", [sys.executable, "-m", "api.worker"], cwd=paths.PROJECT_ROOT,
                           env=own_stack.service_env() | {"WORKER_BIND": standby_url.removeprefix("http://")},
                           log_path=own_stack.log_dir / "worker-2.log")
    standby.start()
    try:
        wait_until(lambda: _worker_role(standby_url) == "standby", timeout=30,
                   message=lambda: f"the second worker did not stand by:\n{standby.last_lines()}")
        assert _worker_role(own_stack.url("worker")) == "leader"
        [vehicle] = connected_vehicles(1)
        vehicle.close()
        own_stack.stop_component("worker")
        try:
            wait_until(lambda: _worker_role(standby_url) == "leader", timeout=30,
                       message="the standby did not take over")
            mission = _create_mission(own_admin, vehicle, "after take-over")
            assert _reconnect_and_receive_a_mission(vehicle) == mission["id"]
        finally:
            own_stack.start_component("worker")
        assert _worker_role(own_stack.url("worker")) == "standby", "two leaders"
    finally:
        standby.stop()
    record("fault", "leading worker stopped with a second one running", take_over="the standby became leader",
           queued_missions="dispatched by the new leader")


def _worker_role(url: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return json.load(response)["role"]
    except OSError:
        return None


def test_broker_restart_vehicles_reconnect_and_queued_missions_are_dispatched(own_stack, own_admin,
                                                                              connected_vehicles):
    [vehicle] = connected_vehicles(1)
    vehicle.close()
    own_stack.stop_component("broker")
    try:
        mission = _create_mission(own_admin, vehicle, "after restart")
        assert mission["state"] == "queued"
    finally:
        own_stack.start_component("broker")
    assert _reconnect_and_receive_a_mission(vehicle) == mission["id"]
    record("fault", "broker restarted", queued_mission="dispatched after the vehicle reconnected")
