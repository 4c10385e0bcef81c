"""The api's background work, in its own process: ``python -m api.worker``.

It drives the mission dispatcher (api/dispatcher.py) and the emergency commands (api/emergency_commands.py) without
any request. A vehicle that connects is sent the emergency stop that applies to it first, then its configuration,
then its next mission (PostgreSQL notifications); a queued mission also goes out when its vehicle finishes its
current one. Every loop turn it re-sends the emergency commands that no vehicle confirmed yet and that are due (the
loop wakes up for them, a fraction of a second after a vehicle connects). Every ``WORKER_TICK_S`` a sweep expires
missions past their TTL, times out silent ones, retries dispatches that found no subscriber, re-sends unconfirmed
cancel/pause/resume commands and ``config.update`` to vehicles that came online behind their desired
configuration; every ``WORKER_MAINTENANCE_INTERVAL_S`` it runs ``fleet_maintenance()`` (partitions, retention,
liveness). It also re-applies the inbound messages the ingest parked (NOTIFY fleet_ingest_parked, and whenever a
parked one is due) and every ``WORKER_BROKER_CHECK_S`` reads the broker's pgsql action counters, logging a dropped
batch at CRITICAL (api/ingest_recovery.py). On a thread of its own it applies the telemetry queue in sets
(api/ingest_queue.py), and on another the alarms and webhooks (api/notifier.py).

Any number of workers may run (replicas, or a new one starting before the old one is gone): only the holder of a
PostgreSQL advisory lock works, the others wait as standbys and take over when its session ends.

``GET /healthz`` on ``WORKER_BIND``: 200 while it leads or stands by (the body says which) and its loop turned
within ``WORKER_STALL_AFTER_S``; 503 while it starts, waits for the database, or is stuck. The embedded launcher
(fleetctl/stack.py) and Compose poll it. SIGTERM or SIGINT stop the worker within one tick.
"""
from __future__ import annotations

import json
import logging
import select
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2
import psycopg2.extensions

from api.config import WorkerConfig
from api.dispatcher import MissionDispatcher
from api.emergency_commands import EmergencyCommands
from api.ingest_queue import TelemetryDrain
from api.ingest_recovery import BrokerActionWatch, ParkedIngest
from api.notifier import Notifier
from fleetcore import logs
from fleetcore import missions as mission_states
from fleetcore.config import ConfigError
from fleetcore.db import Database, connect
from fleetcore.emqx_api import EmqxApi
from fleetcore.errors import HttpError
from fleetcore.logs import log_event

log = logging.getLogger("api.worker")
LEADER_LOCK_KEY = 0x666C7464  # "fltd"
CHANNELS = ("fleet_mission_state", "fleet_vehicle_online", "fleet_ingest_parked")
STANDBY_RETRY_S = 5.0
# A mission that leaves the vehicle (ended, or back in the queue) may free it for its next one.
_FREES_THE_VEHICLE = frozenset((*mission_states.TERMINAL, mission_states.QUEUED))


class Worker:
    """The loop: become leader, then react to notifications and sweep until stopped. Survives database
    outages (it backs off and starts over) and anything else (logged, then it starts over)."""

    def __init__(self, config: WorkerConfig, dispatcher: MissionDispatcher, emergency: EmergencyCommands,
                 broker_watch: BrokerActionWatch | None = None) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self.emergency = emergency
        self.parked = ParkedIngest()
        self.broker_watch = broker_watch
        self.stopping = threading.Event()
        self.role = "starting"
        self.last_turn = time.monotonic()
        self.notifier = Notifier(config, self.stopping)   # alarms and webhooks, on a thread of their own
        self.telemetry = TelemetryDrain(config, self.stopping)   # the telemetry queue, on another

    def _turned(self, role: str | None = None) -> None:
        self.last_turn = time.monotonic()
        if role:
            self.role = role

    def health(self) -> tuple[int, dict]:
        age = time.monotonic() - self.last_turn
        notifier = self.notifier.health()
        telemetry = self.telemetry.health()
        if max(age, notifier["last_turn_s_ago"], telemetry["last_turn_s_ago"]) > self.config.stall_after_s:
            status = "stalled"
        elif (self.role in ("leader", "standby") and notifier["role"] in ("leader", "standby")
              and telemetry["state"] == "draining"):
            status = "ok"
        else:  # starting, waiting_for_database, restarting
            status = "not_working"
        return (200 if status == "ok" else 503), {"status": status, "role": self.role,
                                                  "last_turn_s_ago": round(age, 1), "alarms": notifier,
                                                  "telemetry_queue": telemetry}

    def run(self) -> None:
        """The dispatcher loop on this thread; alarms and webhooks on the notifier's, the telemetry queue on the
        drain's."""
        self.notifier.start()
        self.telemetry.start()
        try:
            self._run_dispatcher()
        finally:
            self.notifier.join(timeout=10)
            self.telemetry.join(timeout=10)

    def _run_dispatcher(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                self._lead()
                backoff = 1.0
            except (psycopg2.Error, OSError) as exc:
                log_event(log, "worker.db_error", logging.WARNING, error=str(exc).strip()[:200])
                self._turned("waiting_for_database")
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception:
                log.exception("worker loop failed", extra={"event": "worker.crash"})
                self._turned("restarting")
                self.stopping.wait(backoff)

    def _lead(self) -> None:
        conn = connect(self.config.database_url, autocommit=True, application_name="api-worker")
        try:
            with conn.cursor() as cur:
                while not self.stopping.is_set():
                    cur.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,))
                    if cur.fetchone()[0]:
                        break
                    self._turned("standby")
                    self.stopping.wait(STANDBY_RETRY_S)
                else:
                    return
                for channel in CHANNELS:
                    cur.execute(f"LISTEN {channel}")
            self._turned("leader")
            log_event(log, "worker.leading")
            self._loop(conn)
        finally:
            conn.close()

    def _loop(self, conn: psycopg2.extensions.connection) -> None:
        next_sweep = 0.0
        next_maintenance = time.monotonic() + 2.0
        next_parked = 0.0
        next_broker_check = time.monotonic() + self.config.broker_check_s
        wait_s = 0.0
        while not self.stopping.is_set():
            self._turned()
            readable, _, _ = select.select([conn], [], [], min(self.config.tick_s, wait_s))
            vehicles: set[str] = set()
            came_online: set[str] = set()
            if readable:
                conn.poll()
                while conn.notifies:
                    notify = conn.notifies.pop(0)
                    if notify.channel == "fleet_ingest_parked":
                        next_parked = 0.0
                        continue
                    found = _vehicles_to_try(notify)
                    vehicles |= found
                    if notify.channel == "fleet_vehicle_online":
                        came_online |= found
            # a stop first: nothing else matters to a vehicle that must not move
            self.emergency.send_to(sorted(came_online))
            for vehicle_id in sorted(came_online):
                self.dispatcher.resend_config(vehicle_id)
            for vehicle_id in sorted(vehicles):
                self.dispatcher.dispatch_next(vehicle_id)
            now = time.monotonic()
            if now >= next_sweep:
                self.dispatcher.sweep()
                next_sweep = now + self.config.tick_s
            if now >= next_maintenance:
                summary = self.dispatcher.maintenance()
                if summary:
                    log_event(log, "maintenance.ran", logging.DEBUG, summary=summary)
                next_maintenance = now + self.config.maintenance_interval_s
            if now >= next_parked:
                next_parked = time.monotonic() + self.parked.retry(conn)
            if self.broker_watch is not None and now >= next_broker_check:
                self.broker_watch.check()
                next_broker_check = now + self.config.broker_check_s
            next_emergency = self.emergency.send_due()
            wait_s = self.config.tick_s if next_emergency is None else max(0.05, next_emergency)
            wait_s = max(0.05, min(wait_s, next_parked - time.monotonic()))


def _vehicles_to_try(notify) -> set[str]:
    """A vehicle that came online, or whose mission just ended, may be ready for its next mission."""
    try:
        payload = json.loads(notify.payload)
    except ValueError:
        return set()
    vehicle_id = payload.get("vehicle_id")
    if not vehicle_id:
        return set()
    if notify.channel == "fleet_vehicle_online" or payload.get("to_state") in _FREES_THE_VEHICLE:
        return {vehicle_id}
    return set()


# -- liveness endpoint ---------------------------------------------------------------------------------------
def serve_health(worker: Worker, bind: str) -> ThreadingHTTPServer:
    """``GET /healthz`` in a background thread; any other request is a JSON 404/405."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] == "/healthz":
                self._send(*worker.health())
            else:
                self._send(404, HttpError(404, "not found; the worker serves GET /healthz").body())

        def do_POST(self) -> None:
            self._send(405, HttpError(405, "the worker serves GET /healthz only").body())

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - health polls are not worth a line
            pass

    host, _, port = bind.rpartition(":")
    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)  # noqa: S104 - WORKER_BIND decides
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="worker-health", daemon=True).start()
    return server


def main() -> int:
    logs.configure("worker")
    try:
        config = WorkerConfig.from_env()
    except ConfigError as exc:
        log_event(log, "worker.config_error", logging.ERROR, error=str(exc))
        return 2
    database = Database(config.database_url, max_connections=2, application_name="api-worker")
    emqx = EmqxApi(config.emqx_api_url, config.emqx_api_key, config.emqx_api_secret)
    worker = Worker(config, MissionDispatcher(database, emqx), EmergencyCommands(database, emqx),
                    BrokerActionWatch(emqx))
    server = serve_health(worker, config.bind)

    def stop(signum: int, _frame) -> None:
        log_event(log, "worker.stopping", signal=signal.Signals(signum).name)
        worker.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log_event(log, "worker.started", bind=config.bind, tick_s=config.tick_s)
    try:
        worker.run()
    finally:
        server.shutdown()
    log_event(log, "worker.stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
