"""Emergency commands that reach every vehicle they apply to, and keep reaching it until it confirms.

An emergency stop is a row (api/queries/emergency.py), stored and audited before anything is published. From the
stops, each vehicle has one wanted command: ``stop`` while any active stop applies to it, ``release`` once none
does. ``EmergencyCommands`` publishes that command on the vehicle's own ``cmd`` topic:

* at once, from the request that set or released the stop, to the vehicles in scope that are online;
* at once, from the worker, to a vehicle that connects (``fleet_vehicle_online``);
* again with back-off, from the worker, to every online vehicle that has not confirmed it yet — confirmed means a
  status report since then with ``estop: true`` for a stop, ``false`` for a release.

Why re-send and not retain (docs/PROTOCOL.md, Emergency stop): the database is the record of who is stopped, a
retained message holds one command per topic and is not the broker's durable store, and only re-sending until the
vehicle confirms tells the operator that it really stopped.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from api import vda5050 as vda
from api.queries import emergency
from api.vehicle_commands import VehicleCommands
from fleetcore import envelope, topics
from fleetcore.db import Database
from fleetcore.emqx_api import EmqxApi, EmqxApiError
from fleetcore.logs import log_event

log = logging.getLogger("api.emergency")

COMMAND_TYPE_OF = {"stop": "emergency.stop", "release": "emergency.release"}
# A vehicle that just connected has usually not subscribed yet (the broker answers "no subscriber"): try again
# soon. One that got the command and did not confirm: after a growing pause.
UNDELIVERED_RETRY_S = (0.25, 0.5, 1.0, 2.0)
DELIVERED_RETRY_S = (1.0, 2.0, 5.0, 10.0)
PUBLISH_THREADS = 8
# A release only clears the remote stop: a vehicle still reporting `estop: true` may have its own button pressed.
# It is re-sent a bounded number of times (and again whenever the vehicle connects); a stop never gives up.
MAX_RELEASE_SENDS = 10


def retry_after(sends: int, delivered: bool) -> float:
    """Seconds before the next send, after ``sends`` sends (this one included)."""
    steps = DELIVERED_RETRY_S if delivered else UNDELIVERED_RETRY_S
    return steps[min(sends, len(steps)) - 1]


def command_message(row: dict, msg_id: str | None = None) -> dict:
    """The emergency.stop / emergency.release command for one vehicle's command row."""
    if row["command"] == "stop":
        data = {"reason": row["reason"], "issued_by": row["set_by"]}
    else:
        data = {"reason": row["release_reason"], "issued_by": row["released_by"]}
    data.update(stop_id=row["stop_id"], scope=row["scope"])
    return envelope.command(COMMAND_TYPE_OF[row["command"]], data, msg_id=msg_id)


class EmergencyCommands:
    def __init__(self, db: Database, emqx: EmqxApi) -> None:
        self.db = db
        self.emqx = emqx
        self.commands = VehicleCommands(db, emqx)   # a vehicle's own cmd topic: recorded in the outbox too
        self.vda = vda.VdaOutbound(db, emqx)

    def send_to(self, vehicle_ids: list[str]) -> dict[str, bool]:
        """Send each of these vehicles (that just connected) its unacknowledged command now; {vehicle: delivered}.

        Its command is brought up to date first: a vehicle created after a fleet or all-fleets stop was set has
        none yet, and must be stopped all the same."""
        if not vehicle_ids:
            return {}
        with self.db.transaction() as cur:
            for vehicle_id in vehicle_ids:
                emergency.sync_commands(cur, emergency.target("vehicle", vehicle_id=vehicle_id))
            rows = emergency.open_commands(cur, vehicle_ids=vehicle_ids)
        return self._send(rows)

    def send_for_stop(self, stop_id: int) -> dict[str, bool]:
        """Send the command of this stop (set or released) now to every online vehicle that carries it."""
        with self.db.transaction() as cur:
            rows = emergency.open_commands(cur, stop_id=stop_id)
        return self._send(rows)

    def send_due(self) -> float | None:
        """Re-send every unacknowledged command of an online vehicle that is due; returns the seconds until the
        next one is due (None: nothing open), so the worker can wake up in time."""
        with self.db.transaction() as cur:
            for row in emergency.acknowledge(cur):
                log_event(log, f"emergency.{row['command']}_acknowledged", vehicle=row["vehicle_id"],
                          stop=row["stop_id"])
            rows = emergency.next_commands(cur, MAX_RELEASE_SENDS)
        due = [row for row in rows if row["wait_s"] <= 0]
        self._send(due)
        waiting = [row["wait_s"] for row in rows if row["wait_s"] > 0]
        if due:
            return min(UNDELIVERED_RETRY_S)
        return min(waiting) if waiting else None

    def _send(self, rows: list[dict]) -> dict[str, bool]:
        if not rows:
            return {}
        if len(rows) == 1:
            results = [self._send_one(rows[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(PUBLISH_THREADS, len(rows))) as pool:
                results = list(pool.map(self._send_one, rows))
        with self.db.transaction() as cur:
            for row, (msg_id, delivered) in zip(rows, results, strict=True):
                if msg_id is not None:
                    emergency.record_send(cur, row["vehicle_id"], row["command"], msg_id, delivered,
                                          retry_after(row["sends"] + 1, delivered))
        return {row["vehicle_id"]: delivered for row, (_, delivered) in zip(rows, results, strict=True)}

    def _send_one(self, row: dict) -> tuple[str | None, bool]:
        identity = vda.identity_of(self.db, row["vehicle_id"])
        if identity is not None:
            # VDA 5050 has no e-stop command: startPause stops it where it is, stopPause lets it go on. The stop
            # stays latched here all the same, and is confirmed by the state's `paused` (sql/code/26_vda5050.sql).
            delivered = self.vda.send_instant_action(identity, vda.EMERGENCY_ACTIONS[row["command"]])
            return f"vda5050:{vda.EMERGENCY_ACTIONS[row['command']]}", delivered
        command = command_message(row)
        try:
            delivered = self.commands.publish(row["vehicle_id"], command).delivered
        except EmqxApiError as exc:
            log_event(log, f"{command['type']}.not_sent", logging.ERROR, vehicle=row["vehicle_id"],
                      stop=row["stop_id"], error=str(exc))
            return None, False
        log_event(log, f"{command['type']}.sent", logging.WARNING if row["command"] == "stop" else logging.INFO,
                  vehicle=row["vehicle_id"], stop=row["stop_id"], msg_id=command["msg_id"], delivered=delivered,
                  attempt=row["sends"] + 1)
        return command["msg_id"], delivered

    def broadcast(self, row: dict) -> bool:
        """The all-fleets stop on ``fleet/v1/_fleet/cmd`` too: one publish reaches every subscribed vehicle at
        once, before the per-vehicle sends get round to it. Raises EmqxApiError."""
        command = command_message({**row, "stop_id": row["id"], "command": "stop"})
        return self.emqx.publish(topics.fleet_command_topic(), command, qos=1).delivered
