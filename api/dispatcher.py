"""Mission dispatch: queued missions go to their vehicle when it is online, idle and not blocked, by priority, then
age.

``MissionDispatcher.dispatch_next(vehicle)`` is the one way a mission is sent. It runs inside the request that
creates a mission (so an online, idle vehicle gets it at once) and in the worker process (`python -m api.worker`), which
reacts to PostgreSQL notifications (a vehicle came online, a mission finished) and sweeps every second: expiry
(TTL), timeouts, retries after "no subscriber", operator commands the vehicle has not confirmed, and the periodic
database maintenance (partitions, retention, liveness).

Gating: a vehicle that is e-stopped (by an operator's stop or by itself), in MANUAL or SERVICE mode, FATAL, or below
its fleet's battery threshold gets nothing; its missions stay `queued` and show why (``dispatch_blocker`` in
sql/code/31_dispatch_gating.sql, the one definition). The sweep tries it again once the condition clears.

Ordering that makes it safe: the mission is committed as `dispatched` *before* the command is published, so
the vehicle's `accepted` can never arrive for a mission the database still calls `queued`; if the broker
answers 202 (nobody subscribed) or is unreachable, the mission goes back to `queued` with a back-off.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from api import vda5050 as vda
from api.queries import missions
from api.vehicle_commands import VehicleCommands
from fleetcore import envelope, vda5050
from fleetcore import missions as mission_states
from fleetcore.db import Database
from fleetcore.emqx_api import EmqxApi, EmqxApiError
from fleetcore.logs import log_event

log = logging.getLogger("api.dispatcher")


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
    vda_order_id: str | None = None   # a VDA 5050 vehicle gets this order instead of the command


def mission_command(mission: dict, msg_id: str) -> dict:
    return envelope.command("mission.dispatch", {
        "mission_id": str(mission["id"]), "name": mission["name"], "priority": mission["priority"],
        "waypoints": mission["waypoints"], "tasks": mission["tasks"], "timeout_s": mission["timeout_s"],
        "expires_at": mission["expires_at"].isoformat() if mission["expires_at"] else None,
    }, msg_id=msg_id)


class MissionDispatcher:
    CONFIG_RETRIES_S = (2.0, 5.0, 15.0)
    COMMAND_RETRIES_S = (2.0, 4.0, 8.0, 16.0, 30.0)   # an unconfirmed cancel/pause/resume, after each send
    MAX_COMMAND_SENDS = 10                           # pause and resume; a cancel goes on until the mission ends

    def __init__(self, db: Database, emqx: EmqxApi) -> None:
        self.db = db
        self.emqx = emqx
        self.commands = VehicleCommands(db, emqx)   # every command to one vehicle goes through it (the outbox)
        self.vda = vda.VdaOutbound(db, emqx)
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
        if vehicle["blocked"]:
            return DispatchResult(None, None, False, vehicle["blocked"])
        if not vehicle["online"]:
            return DispatchResult(None, None, False, "vehicle_offline")
        if vehicle["busy"]:
            return DispatchResult(None, None, False, "vehicle_busy")
        mission = missions.next_queued(cur, vehicle_id)
        if mission is None:
            return DispatchResult(None, None, False, "nothing_queued")
        if mission["backing_off"]:
            return DispatchResult(str(mission["id"]), mission["state"], False, "backing_off")
        command = mission_command(mission, msg_id=envelope.command("mission.dispatch", {})["msg_id"])
        result = missions.apply_event(cur, str(mission["id"]), "dispatch", "system", "dispatcher",
                                      {"command_msg_id": command["msg_id"],
                                       "attempt": mission["dispatch_attempts"] + 1})
        if not result["applied"]:
            return DispatchResult(str(mission["id"]), mission["state"], False, result["error"] or "not_applied")
        missions.record_dispatch_attempt(cur, str(mission["id"]), command["msg_id"])
        identity = vda5050.identity_of(cur, vehicle_id)
        if identity is not None:
            return Claim(vehicle_id, str(mission["id"]), command, vda.claim_order(cur, identity, mission))
        return Claim(vehicle_id, str(mission["id"]), command)

    def send(self, claim: Claim | DispatchResult) -> DispatchResult:
        """Publish a committed claim; on 202 (nobody subscribed) or a broker error, back to `queued` with a
        back-off."""
        if isinstance(claim, DispatchResult):
            return claim
        vehicle_id, mission_id, command = claim.vehicle_id, claim.mission_id, claim.command
        if claim.vda_order_id is not None:
            delivered = self.vda.send_order(claim.vda_order_id)
            reason = "delivered" if delivered else "no_subscriber"
        else:
            try:
                published = self.commands.publish(vehicle_id, command)
                delivered, reason = published.delivered, "delivered" if published.delivered else "no_subscriber"
            except EmqxApiError as exc:
                delivered, reason = False, f"broker_error: {exc}"
        if delivered:
            log_event(log, "mission.dispatched", mission=mission_id, vehicle=vehicle_id, msg_id=command["msg_id"])
            return DispatchResult(mission_id, mission_states.DISPATCHED, True, reason)
        with self.db.transaction() as cur:
            missions.apply_event(cur, mission_id, "requeue", "system", "dispatcher", {"reason": reason})
            missions.back_off(cur, mission_id)
        log_event(log, "mission.requeued", logging.WARNING, mission=mission_id, vehicle=vehicle_id, reason=reason)
        return DispatchResult(mission_id, mission_states.QUEUED, False, reason)

    def send_mission_command(self, mission_id: str, vehicle_id: str, command: str, reason: str | None,
                             sends: int = 0) -> bool:
        """Publish an operator's ``mission.cancel`` / ``.pause`` / ``.resume`` and record the send; until the vehicle
        confirms, ``resend_commands`` sends it again with back-off. Returns whether a session received it."""
        identity = vda.identity_of(self.db, vehicle_id)
        if identity is not None:
            delivered = self.vda.send_instant_action(identity, vda.MISSION_COMMAND_ACTIONS[command], mission_id)
        else:
            message = envelope.command(f"mission.{command}", {"mission_id": mission_id, "reason": reason})
            try:
                delivered = self.commands.publish(vehicle_id, message).delivered
            except EmqxApiError as exc:
                log_event(log, f"mission.{command}_not_sent", logging.WARNING, mission=mission_id, error=str(exc))
                delivered = False
        with self.db.transaction() as cur:
            missions.record_command_send(cur, mission_id, command, self.COMMAND_RETRIES_S[
                min(sends, len(self.COMMAND_RETRIES_S) - 1)])
        log_event(log, f"mission.{command}_sent", mission=mission_id, vehicle=vehicle_id, delivered=delivered,
                  attempt=sends + 1)
        return delivered

    def resend_commands(self) -> int:
        """Send again every unconfirmed cancel, pause or resume that is due (a cancel until the mission ends or
        times out; a pause or resume at most ``MAX_COMMAND_SENDS`` times). Returns how many were sent."""
        with self.db.transaction() as cur:
            due = missions.commands_due(cur, self.MAX_COMMAND_SENDS)
        for row in due:
            self.send_mission_command(str(row["id"]), row["vehicle_id"], row["pending_command"],
                                      row["reason"], row["command_sends"])
        return len(due)

    def resend_config(self, vehicle_id: str, attempt: int = 0) -> bool:
        """A vehicle that comes online behind its desired configuration gets ``config.update`` again (the one
        sent while it was offline found no subscriber); a VDA 5050 vehicle is asked for its factsheet. Returns
        whether a command was delivered."""
        self._config_retries.pop(vehicle_id, None)
        identity = vda.identity_of(self.db, vehicle_id)
        if identity is not None:
            # A VDA 5050 vehicle has no configuration of ours. What it is asked for when it connects is its factsheet
            # (the instant action factsheetRequest): its capability sheet is then the one it drives with now.
            delivered = self.vda.send_instant_action(identity, "factsheetRequest")
            if not delivered and attempt < len(self.CONFIG_RETRIES_S):
                self._config_retries[vehicle_id] = (time.monotonic() + self.CONFIG_RETRIES_S[attempt], attempt + 1)
            return delivered
        with self.db.transaction() as cur:
            cur.execute("SELECT desired_config, desired_config_version, reported_config_version FROM vehicles "
                        "WHERE id = %s AND status = 'active'", (vehicle_id,))
            row = cur.fetchone()
        if row is None or row["desired_config_version"] <= (row["reported_config_version"] or 0):
            return False
        command = envelope.command("config.update", {"version": row["desired_config_version"],
                                                      "config": row["desired_config"]})
        try:
            delivered = self.commands.publish(vehicle_id, command).delivered
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
        self.resend_commands()
        self.vda.resend_unseen_orders()
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
