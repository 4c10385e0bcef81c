"""Mission dispatch: ``POST /api/v1/missions`` for an online, idle vehicle → the vehicle's paho client receives the
``mission.dispatch`` command on ``fleet/v1/{id}/cmd`` (the api commits the mission as dispatched, then publishes
through the broker's ``POST /api/v5/publish``). Latency p50/p99 over sequential missions (target p99 < 50 ms),
then throughput: missions/s created and delivered with several operators posting at once.

Latency is measured from the moment the POST is sent to the moment the vehicle receives the command (the command
usually arrives before the POST's response, so "response → receive" would be negative); the POST round trip is
shown beside it. Each vehicle answers ``accepted`` then ``completed`` (QoS 1, one after the other's PUBACK); the
broker writes them in that order (one client, one buffer worker). A PUBACK means received, not stored (EMQX
acknowledges on receipt, docs/EMQX.md §5.6a), so the vehicle is idle again for its next mission once ``completed``
is stored, read from the database — the next dispatch waits for that. The time from the vehicle sending
``completed`` to the mission's ``finished_at`` is the mission event → mission state latency.

Baseline in the same run: the raw broker path the api uses — ``POST /api/v5/publish`` of a command-sized message
to the same vehicles' cmd topics → paho receive — sequential and with the same concurrency.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg2
import requests

from bench import report
from bench.fleet import provision_vehicles
from bench.loadgen import percentiles
from bench.paho_pool import ClientPool
from bench.report import say
from bench.stackutil import start_stack
from fleetcore import topics
from fleetctl.stack import API_KEY_NAME

WAYPOINTS = [{"lat": 48.137, "lon": 11.575}, {"lat": 48.139, "lon": 11.58}]


class Vehicle:
    """One paho client: records when each command arrives; answers missions with accepted → completed."""

    def __init__(self, vehicle_id: str, password: str, arrivals: Arrivals) -> None:
        self.vehicle_id = vehicle_id
        self.arrivals = arrivals
        self.idle = threading.Event()
        self.idle.set()
        self.subscribed = False
        self.pending: list[dict] = []   # mission events still to send, in order
        self.inflight: int | None = None
        self._last_event = ""
        self.seq = 0
        self.last_mission: str | None = None        # the mission whose completed was acknowledged last
        self.completed_sent_at = 0.0                 # time.time() when that completed was published
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=vehicle_id, clean_session=True)
        self.client.username_pw_set(vehicle_id, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe(topics.vehicle_topic(self.vehicle_id, topics.Kind.CMD), qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.subscribed = not any(rc.is_failure for rc in reason_codes)

    def _on_message(self, client, userdata, message) -> None:
        arrived = time.perf_counter()
        command = json.loads(message.payload)
        key = command["data"].get("mission_id") or command["data"].get("probe_id")
        self.arrivals.arrived(key, arrived)
        if command.get("type") == "mission.dispatch":
            for event in ("accepted", "completed"):
                self.pending.append({"mission_id": key, "event": event})
            self._send_next()

    def _send_next(self) -> None:
        if self.inflight is not None or not self.pending:
            return
        self.seq += 1
        data = self.pending.pop(0)
        envelope = {"v": 1, "msg_id": uuid.uuid4().hex, "seq": self.seq, "ts": int(time.time() * 1000), "data": data}
        if data["event"] == "completed":
            self.completed_sent_at = time.time()
        info = self.client.publish(topics.vehicle_topic(self.vehicle_id, topics.Kind.MISSION), json.dumps(envelope),
                                   qos=1)
        self.inflight = info.mid
        self._last_event = data["event"]
        self._last_mission_id = data["mission_id"]

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if mid != self.inflight:
            return
        self.inflight = None
        if self._last_event == "completed" and not self.pending:
            self.last_mission = self._last_mission_id
            self.idle.set()
        self._send_next()


class Arrivals:
    """When each command (by mission or probe id) reached its vehicle; waiters block on an Event, not a poll."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: dict[str, float] = {}
        self.events: dict[str, threading.Event] = {}

    def _event(self, key: str) -> threading.Event:
        with self.lock:
            return self.events.setdefault(key, threading.Event())

    def arrived(self, key: str, at: float) -> None:
        self.times[key] = at
        self._event(key).set()

    def wait(self, key: str, timeout: float) -> float | None:
        if not self._event(key).wait(timeout):
            return None
        with self.lock:
            self.events.pop(key, None)
        return self.times.pop(key)


class Fleet(threading.Thread):
    """Every vehicle's client on one selector thread (all paho calls happen on it)."""

    def __init__(self, port: int, credentials: list[tuple[str, str]]) -> None:
        super().__init__(name="bench-vehicles", daemon=True)
        self.arrivals = Arrivals()
        self.vehicles = [Vehicle(vid, pw, self.arrivals) for vid, pw in credentials]
        self.pool = ClientPool()
        for vehicle in self.vehicles:
            vehicle.client.connect("127.0.0.1", port, keepalive=60)
            self.pool.add(vehicle.client)
        self.halt = threading.Event()

    def run(self) -> None:
        self.pool.run_until(self.halt.is_set, time.monotonic() + 3600, misc_every=1.0)
        self.pool.close()

    def wait_received(self, key: str, timeout: float) -> float | None:
        return self.arrivals.wait(key, timeout)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _all_online(database_url: str, ids: list[str]) -> bool:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM vehicle_state WHERE online AND vehicle_id = ANY(%s)", (ids,))
        n = cur.fetchone()[0]
    conn.close()
    return n == len(ids)


class MissionPoster:
    """POST /api/v1/missions for a vehicle once it is idle; returns (sent, responded, mission id, state)."""

    def __init__(self, api_url: str, token: str, database_url: str) -> None:
        self.url = api_url + "/api/v1/missions"
        self.local = threading.local()
        self.headers = {"Authorization": f"Bearer {token}"}
        self.database_url = database_url
        self.event_to_state_ms: list[float] = []     # completed sent → mission finished_at, per mission

    def _stored(self, vehicle: Vehicle) -> None:
        """Wait until the vehicle's last completed is stored; record how long that took from its publish."""
        if vehicle.last_mission is None:
            return
        if not hasattr(self.local, "db"):
            self.local.db = psycopg2.connect(self.database_url)
            self.local.db.autocommit = True
        deadline = time.monotonic() + 30
        with self.local.db.cursor() as cur:
            while True:
                cur.execute("SELECT extract(epoch FROM finished_at) FROM missions WHERE id = %s AND state = "
                            "'completed'", (vehicle.last_mission,))
                row = cur.fetchone()
                if row is not None:
                    self.event_to_state_ms.append((float(row[0]) - vehicle.completed_sent_at) * 1000)
                    vehicle.last_mission = None
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{vehicle.vehicle_id}: mission {vehicle.last_mission} never completed")
                time.sleep(0.002)

    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
            self.local.session.headers.update(self.headers)
        return self.local.session

    def post(self, vehicle: Vehicle, n: int) -> tuple[float, float, str, str]:
        if not vehicle.idle.wait(30):
            raise RuntimeError(f"{vehicle.vehicle_id} did not finish its previous mission")
        self._stored(vehicle)
        vehicle.idle.clear()
        body = {"vehicle_id": vehicle.vehicle_id, "name": f"bench mission {n}", "waypoints": WAYPOINTS,
                "timeout_s": 600}
        sent = time.perf_counter()
        response = self.session().post(self.url, json=body, timeout=30)
        responded = time.perf_counter()
        if response.status_code != 201:
            raise RuntimeError(f"POST /missions answered {response.status_code}: {response.text[:300]}")
        mission = response.json()
        return sent, responded, mission["id"], mission["state"]


class RawPublisher:
    """POST /api/v5/publish straight to the broker: the baseline path."""

    def __init__(self, emqx_url: str, secret: str) -> None:
        self.url = emqx_url + "/api/v5/publish"
        self.auth = (API_KEY_NAME, secret)
        self.local = threading.local()

    def post(self, vehicle: Vehicle, n: int) -> tuple[float, float, str, str]:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
            self.local.session.auth = self.auth
        probe = uuid.uuid4().hex
        command = {"v": 1, "msg_id": uuid.uuid4().hex, "ts": int(time.time() * 1000), "type": "bench.probe",
                   "data": {"probe_id": probe, "name": f"bench mission {n}", "waypoints": WAYPOINTS}}
        sent = time.perf_counter()
        response = self.local.session.post(self.url, timeout=30, json={
            "topic": topics.vehicle_topic(vehicle.vehicle_id, topics.Kind.CMD),
            "payload": json.dumps(command), "qos": 1, "retain": False})
        responded = time.perf_counter()
        if response.status_code != 200:
            raise RuntimeError(f"POST /api/v5/publish answered {response.status_code}: {response.text[:300]}")
        return sent, responded, probe, "delivered"


def run_phase(fleet: Fleet, poster, count: int, concurrency: int) -> dict:
    """``count`` requests, ``concurrency`` at a time, each for a vehicle of its own slice; timings per request."""
    vehicles = fleet.vehicles
    slices = [vehicles[i::concurrency] for i in range(concurrency)]
    outcomes: list[dict] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        own = slices[w]
        for n in range(w, count, concurrency):
            vehicle = own[(n // concurrency) % len(own)]
            sent, responded, key, state = poster.post(vehicle, n)
            arrived = fleet.wait_received(key, 30)
            with lock:
                outcomes.append({"sent": sent, "responded": responded, "arrived": arrived, "state": state})

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker, w) for w in range(concurrency)]:
            future.result()
    delivered = [o for o in outcomes if o["arrived"] is not None]
    finished = max((o["arrived"] for o in delivered), default=time.perf_counter())
    for vehicle in vehicles:   # all vehicles idle again before the next phase
        vehicle.idle.wait(30)
    return {"requests": len(outcomes), "delivered": len(delivered), "concurrency": concurrency,
            "states": {s: sum(o["state"] == s for o in outcomes) for s in {o["state"] for o in outcomes}},
            "seconds": round(finished - started, 3), "per_s": round(len(delivered) / (finished - started), 1),
            "receive_ms": percentiles([(o["arrived"] - o["sent"]) * 1000 for o in delivered]),
            "post_ms": percentiles([(o["responded"] - o["sent"]) * 1000 for o in outcomes]),
            "after_response_ms": percentiles([(o["arrived"] - o["responded"]) * 1000 for o in delivered])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, to prove the benchmark works")
    parser.add_argument("--missions", type=int, default=None, help="per phase")
    parser.add_argument("--vehicles", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=8, help="operators posting at once (throughput phase)")
    args = parser.parse_args(argv)
    n_missions = args.missions or (100 if args.quick else 1000)
    n_vehicles = args.vehicles or (16 if args.quick else 64)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        stack = start_stack(Path(tmp), ("authsvc", "broker", "api"))
        fleet = None
        try:
            creds = provision_vehicles(stack.database_url, stack.secrets["FLEET_DEVICE_SECRET_KEY"], "disp-",
                                       n_vehicles)
            fleet = Fleet(stack.config.ports.mqtt, creds)
            fleet.start()
            _wait(lambda: all(v.subscribed for v in fleet.vehicles), 60, "vehicles to subscribe")
            _wait(lambda: _all_online(stack.database_url, [v for v, _ in creds]), 60, "vehicles to be online")
            login = requests.post(stack.url("api") + "/api/v1/auth/login", timeout=30,
                                  json={"username": "admin", "password": stack.secrets["FLEET_ADMIN_PASSWORD"]})
            login.raise_for_status()
            api = MissionPoster(stack.url("api"), login.json()["access_token"], stack.database_url)
            raw = RawPublisher(stack.url("emqx_api"), stack.secrets["FLEET_EMQX_API_SECRET"])
            run_phase(fleet, api, min(20, n_missions), 1)     # warm-up: pools, code paths
            run_phase(fleet, raw, min(20, n_missions), 1)
            api.event_to_state_ms.clear()
            for label, poster, concurrency in (("raw publish, sequential", raw, 1),
                                               ("api mission, sequential", api, 1),
                                               (f"raw publish, {args.concurrency} at once", raw, args.concurrency),
                                               (f"api mission, {args.concurrency} at once", api, args.concurrency)):
                say(f"dispatch: {label}, {n_missions} requests")
                results[label] = run_phase(fleet, poster, n_missions, concurrency)
        finally:
            if fleet:
                fleet.halt.set()
                fleet.join(timeout=10)
            stack.stop("benchmark finished")

    event_to_state = percentiles(api.event_to_state_ms)
    rows, summary = [], []
    for label, r in results.items():
        base = results["raw publish, sequential" if r["concurrency"] == 1
                       else f"raw publish, {args.concurrency} at once"]
        ratio = round(r["receive_ms"]["p50"] / base["receive_ms"]["p50"], 2) if base["receive_ms"]["p50"] else None
        rows.append([label, r["requests"], r["delivered"], r["per_s"], round(r["per_s"] / base["per_s"], 2),
                     r["receive_ms"]["p50"], r["receive_ms"]["p99"], ratio, r["post_ms"]["p50"], r["post_ms"]["p99"],
                     ", ".join(f"{k} {v}" for k, v in sorted(r["states"].items()))])
    seq, seq_base = results["api mission, sequential"], results["raw publish, sequential"]
    par, par_base = (results[f"api mission, {args.concurrency} at once"],
                     results[f"raw publish, {args.concurrency} at once"])
    verdict = "met" if seq["receive_ms"]["p99"] is not None and seq["receive_ms"]["p99"] < 50 else "missed"
    summary.append(f"POST /missions → vehicle receives the command: p50 {seq['receive_ms']['p50']} ms, p99 "
                   f"{seq['receive_ms']['p99']} ms over {seq['delivered']} missions (target p99 < 50 ms: {verdict}) "
                   f"= {seq['receive_ms']['p50'] / seq_base['receive_ms']['p50']:.2f}× the raw publish path "
                   f"(p50 {seq_base['receive_ms']['p50']} ms)")
    summary.append(f"mission event → mission state (a vehicle publishes completed → the mission's finished_at): "
                   f"p50 {event_to_state['p50']} ms, p99 {event_to_state['p99']} ms over {len(api.event_to_state_ms)} "
                   "missions")
    summary.append(f"throughput with {args.concurrency} operators posting at once: {par['per_s']:,.0f} missions/s "
                   f"created and delivered = {par['per_s'] / par_base['per_s']:.2f}× raw publishes/s "
                   f"({par_base['per_s']:,.0f}/s) to the same vehicles")
    notes = [f"{n_vehicles} registered vehicles connected through the stand-in (authn, authz), one paho selector "
             "thread; each answers accepted → completed so it is idle for its next mission (dispatch at once "
             "needs an online, idle vehicle)",
             "latency = request sent → the vehicle's on_message (same process, same clock); POST = the HTTP round "
             "trip; requests with requests.Session keep-alive; a 20-request warm-up precedes each kind",
             "× raw = api p50 latency ÷ raw publish p50 latency (and missions/s ÷ raw publishes/s) at the same "
             "concurrency; the raw path is what the api itself calls after committing the mission",
             "everything (api, authsvc, broker, PostgreSQL, the vehicles, the posting threads) shares the same cores"]
    report.write("dispatch", "Mission dispatch: POST /missions → vehicle receives the command",
                 ["path", "requests", "delivered", "per s", "× raw per s", "receive p50 ms", "receive p99 ms",
                  "× raw p50", "POST p50 ms", "POST p99 ms", "state at response"], rows, summary, notes,
                 raw={"results": results, "quick": args.quick, "vehicles": n_vehicles,
                      "event_to_state_ms": event_to_state})


if __name__ == "__main__":
    main()
