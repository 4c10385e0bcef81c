"""Mission dispatch: queued missions go to their vehicle when it is online and idle, by priority, then age.

``MissionDispatcher.dispatch_next(vehicle)`` is the one way a mission is sent. It runs inside the request that
creates a mission (so an online, idle vehicle gets it at once) and in a background thread that reacts to
PostgreSQL notifications (a vehicle came online, a mission finished) and sweeps every second: expiry (TTL),
timeouts, retries after "no subscriber", and the periodic database maintenance (partitions, retention,
liveness). With several api replicas only the holder of an advisory lock runs the background loop.

Ordering that makes it safe: the mission is committed as `dispatched` *before* the command is published, so
the vehicle's `accepted` can never arrive for a mission the database still calls `queued`; if the broker
answers 202 (nobody subscribed) or is unreachable, the mission goes back to `queued` with a back-off.
"""
from __future__ import annotations

import json
import logging
import select
import threading
import time
from dataclasses import dataclass

import psycopg2
import psycopg2.extensions
from flask import Flask

from api.config import ApiConfig
from api.queries import missions
from fleetcore import envelope, topics
from fleetcore.db import Database, connect
from fleetcore.emqx_api import EmqxApi, EmqxApiError
from fleetcore.logs import log_event

log = logging.getLogger("api.dispatcher")
LEADER_LOCK_KEY = 0x666C7464  # "fltd"
CHANNELS = ("fleet_mission_state", "fleet_vehicle_online")


@dataclass
class DispatchResult:
    mission_id: str | None
    state: str | None
    delivered: bool
    reason: str


@dataclass
class Claim:
    """A mission committed as `dispatched`, whose command is still to be published."""
    vehicle_id: str
    mission_id: str
    command: dict


def mission_command(mission: dict, msg_id: str) -> dict:
    return envelope.command("mission.dispatch", {
        "mission_id": str(mission["id"]), "name": mission["name"], "priority": mission["priority"],
        "waypoints": mission["waypoints"], "tasks": mission["tasks"], "timeout_s": mission["timeout_s"],
        "expires_at": mission["expires_at"].isoformat() if mission["expires_at"] else None,
    }, msg_id=msg_id)


class MissionDispatcher:
    CONFIG_RETRIES_S = (2.0, 5.0, 15.0)

    def __init__(self, db: Database, emqx: EmqxApi, config: ApiConfig) -> None:
        self.db = db
        self.emqx = emqx
        self.config = config
        # vehicle → (when to try again, attempts so far): a vehicle that just connected may not have subscribed
        # to its commands yet, so an undelivered config.update is tried again a few times.
        self._config_retries: dict[str, tuple[float, int]] = {}

    def dispatch_next(self, vehicle_id: str) -> DispatchResult:
        """Send the vehicle its next queued mission if it is online and idle."""
        with self.db.transaction() as cur:
            claim = self.claim_next(cur, vehicle_id)
        return self.send(claim)

    def claim_next(self, cur, vehicle_id: str) -> Claim | DispatchResult:
        """In the caller's transaction: mark the vehicle's next queued mission `dispatched` (or say why not).
        The caller commits, then calls ``send`` — the command never leaves before the state is committed."""
        vehicle = missions.lock_vehicle(cur, vehicle_id)
        if vehicle is None or vehicle["status"] != "active":
            return DispatchResult(None, None, False, "vehicle_not_active")
        if not vehicle["online"]:
            return DispatchResult(None, None, False, "vehicle_offline")
        if vehicle["busy"]:
            return DispatchResult(None, None, False, "vehicle_busy")
        mission = missions.next_queued(cur, vehicle_id)
        if mission is None:
            return DispatchResult(None, None, False, "nothing_queued")
        command = mission_command(mission, msg_id=envelope.command("mission.dispatch", {})["msg_id"])
        result = missions.apply_event(cur, str(mission["id"]), "dispatch", "system", "dispatcher",
                                      {"command_msg_id": command["msg_id"],
                                       "attempt": mission["dispatch_attempts"] + 1})
        if not result["applied"]:
            return DispatchResult(str(mission["id"]), mission["state"], False, result["error"] or "not_applied")
        missions.record_dispatch_attempt(cur, str(mission["id"]), command["msg_id"])
        return Claim(vehicle_id, str(mission["id"]), command)

    def send(self, claim: Claim | DispatchResult) -> DispatchResult:
        """Publish a committed claim; on 202 (nobody subscribed) or a broker error, back to `queued` with a
        back-off."""
        if isinstance(claim, DispatchResult):
            return claim
        vehicle_id, mission_id, command = claim.vehicle_id, claim.mission_id, claim.command
        try:
            published = self.emqx.publish(topics.vehicle_topic(vehicle_id, topics.Kind.CMD), command, qos=1)
            reason = "delivered" if published.delivered else "no_subscriber"
        except EmqxApiError as exc:
            published, reason = None, f"broker_error: {exc}"
        if published is not None and published.delivered:
            log_event(log, "mission.dispatched", mission=mission_id, vehicle=vehicle_id, msg_id=command["msg_id"])
            return DispatchResult(mission_id, "dispatched", True, reason)
        with self.db.transaction() as cur:
            missions.apply_event(cur, mission_id, "requeue", "system", "dispatcher", {"reason": reason})
            missions.back_off(cur, mission_id)
        log_event(log, "mission.requeued", logging.WARNING, mission=mission_id, vehicle=vehicle_id, reason=reason)
        return DispatchResult(mission_id, "queued", False, reason)

    def publish_cancel(self, mission: dict, reason: str | None) -> bool:
        command = envelope.command("mission.cancel", {"mission_id": str(mission["id"]), "reason": reason})
        try:
            return self.emqx.publish(topics.vehicle_topic(mission["vehicle_id"], topics.Kind.CMD), command,
                                     qos=1).delivered
        except EmqxApiError as exc:
            log_event(log, "mission.cancel_not_sent", logging.WARNING, mission=str(mission["id"]), error=str(exc))
            return False

    def resend_config(self, vehicle_id: str, attempt: int = 0) -> bool:
        """A vehicle that comes online behind its desired configuration gets ``config.update`` again (the one
        sent while it was offline found no subscriber). Returns whether a command was delivered."""
        self._config_retries.pop(vehicle_id, None)
        with self.db.transaction() as cur:
            cur.execute("SELECT desired_config, desired_config_version, reported_config_version FROM vehicles "
                        "WHERE id = %s AND status = 'active'", (vehicle_id,))
            row = cur.fetchone()
        if row is None or row["desired_config_version"] <= (row["reported_config_version"] or 0):
            return False
        command = envelope.command("config.update", {"version": row["desired_config_version"],
                                                      "config": row["desired_config"]})
        try:
            delivered = self.emqx.publish(topics.vehicle_topic(vehicle_id, topics.Kind.CMD), command, qos=1).delivered
        except EmqxApiError as exc:
            log_event(log, "config.resend_failed", logging.WARNING, vehicle=vehicle_id, error=str(exc))
            return False
        log_event(log, "config.resent", vehicle=vehicle_id, version=row["desired_config_version"], delivered=delivered)
        if not delivered and attempt < len(self.CONFIG_RETRIES_S):
            self._config_retries[vehicle_id] = (time.monotonic() + self.CONFIG_RETRIES_S[attempt], attempt + 1)
        return delivered

    def retry_configs(self) -> None:
        now = time.monotonic()
        for vehicle_id, (due, attempt) in list(self._config_retries.items()):
            if due <= now:
                self.resend_config(vehicle_id, attempt)

    # -- periodic work ---------------------------------------------------------------------------------------
    def expire_and_time_out(self) -> int:
        changed = 0
        with self.db.transaction() as cur:
            for mission_id in missions.expired_queued(cur):
                changed += bool(missions.apply_event(cur, mission_id, "expire", "system", "dispatcher",
                                                     {"reason": "ttl_passed"})["applied"])
            for mission_id in missions.timed_out(cur):
                changed += bool(missions.apply_event(cur, mission_id, "timeout", "system", "dispatcher",
                                                     {"reason": "no_event_within_timeout_s"})["applied"])
        return changed

    def sweep(self) -> None:
        self.expire_and_time_out()
        self.retry_configs()
        with self.db.transaction() as cur:
            waiting = missions.vehicles_waiting_for_dispatch(cur)
        for vehicle_id in waiting:
            self.dispatch_next(vehicle_id)

    def maintenance(self) -> dict | None:
        with self.db.transaction() as cur:
            cur.execute("SELECT to_regproc('fleet_maintenance') IS NOT NULL AS present")
            if not cur.fetchone()["present"]:
                return None
            cur.execute("SELECT fleet_maintenance() AS summary")
            return cur.fetchone()["summary"]


class DispatcherThread(threading.Thread):
    """Background loop; only the advisory-lock holder among api processes does the work."""

    def __init__(self, dispatcher: MissionDispatcher, config: ApiConfig) -> None:
        super().__init__(name="mission-dispatcher", daemon=True)
        self.dispatcher = dispatcher
        self.config = config
        self.stopping = threading.Event()

    def run(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                self._lead()
                backoff = 1.0
            except (psycopg2.Error, OSError) as exc:
                log_event(log, "dispatcher.db_error", logging.WARNING, error=str(exc).strip()[:200])
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception:  # the loop must survive anything and say so
                log.exception("dispatcher loop failed", extra={"event": "dispatcher.crash"})
                self.stopping.wait(backoff)

    def _lead(self) -> None:
        conn = connect(self.config.database_url, autocommit=True, application_name="api-dispatcher")
        try:
            with conn.cursor() as cur:
                while not self.stopping.is_set():
                    cur.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,))
                    if cur.fetchone()[0]:
                        break
                    self.stopping.wait(5.0)
                for channel in CHANNELS:
                    cur.execute(f"LISTEN {channel}")
            log_event(log, "dispatcher.leading")
            self._loop(conn)
        finally:
            conn.close()

    def _loop(self, conn: psycopg2.extensions.connection) -> None:
        next_sweep = 0.0
        next_maintenance = time.monotonic() + 2.0
        while not self.stopping.is_set():
            readable, _, _ = select.select([conn], [], [], self.config.dispatcher_tick_s)
            vehicles: set[str] = set()
            came_online: set[str] = set()
            if readable:
                conn.poll()
                while conn.notifies:
                    notify = conn.notifies.pop(0)
                    found = _vehicles_to_try(notify)
                    vehicles |= found
                    if notify.channel == "fleet_vehicle_online":
                        came_online |= found
            for vehicle_id in sorted(came_online):
                self.dispatcher.resend_config(vehicle_id)
            for vehicle_id in sorted(vehicles):
                self.dispatcher.dispatch_next(vehicle_id)
            now = time.monotonic()
            if now >= next_sweep:
                self.dispatcher.sweep()
                next_sweep = now + self.config.dispatcher_tick_s
            if now >= next_maintenance:
                summary = self.dispatcher.maintenance()
                if summary:
                    log_event(log, "maintenance.ran", logging.DEBUG, summary=summary)
                next_maintenance = now + self.config.maintenance_interval_s


def _vehicles_to_try(notify) -> set[str]:
    """A vehicle that came online, or whose mission just ended, may be ready for its next mission."""
    try:
        payload = json.loads(notify.payload)
    except ValueError:
        return set()
    vehicle_id = payload.get("vehicle_id")
    if not vehicle_id:
        return set()
    if notify.channel == "fleet_vehicle_online":
        return {vehicle_id}
    if payload.get("to_state") in ("completed", "failed", "rejected", "cancelled", "timed_out", "expired", "queued"):
        return {vehicle_id}
    return set()


def start(app: Flask) -> DispatcherThread:
    dispatcher = app.extensions["fleet.dispatcher"]
    thread = DispatcherThread(dispatcher, app.extensions["fleet.config"])
    thread.start()
    app.extensions["fleet.dispatcher_thread"] = thread
    return thread
