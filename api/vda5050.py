"""What the backend publishes to a VDA 5050 vehicle (docs/VDA5050.md): its ``order`` and ``instantActions``.

The dispatcher, the mission commands and the emergency commands decide *what* a vehicle must be told, for every
vehicle alike; for a VDA vehicle this module says it in VDA 5050:

* a dispatched mission → an ``order`` (built by fleetcore/vda5050.py, stored in vda5050_orders before it is sent);
* an operator's cancel → the instant action ``cancelOrder``; pause / resume → ``startPause`` / ``stopPause``;
* an emergency stop / release → ``startPause`` / ``stopPause`` (the stop itself stays latched in the database,
  api/emergency_commands.py, and is re-sent until the vehicle's state shows it paused / running again).

The standard publishes order and instantActions with QoS 0, so a message can be lost: an order is re-sent (same
orderId and orderUpdateId, which the vehicle must treat as the same order) until a state names it, and the
instant actions are re-sent by the same back-off that re-sends our own commands until they are confirmed.
Confirmation arrives through the ingest (sql/code/26_vda5050.sql), never here.
"""
from __future__ import annotations

import json
import logging

from fleetcore import topics, vda5050
from fleetcore.db import Database
from fleetcore.emqx_api import EmqxApi, EmqxApiError
from fleetcore.logs import log_event

log = logging.getLogger("api.vda5050")

QOS = 0                    # the standard's QoS for order and instantActions
ORDER_RESEND_S = 2.0       # an order no state has named yet is sent again after this long


def claim_order(cur, identity: vda5050.Identity, mission: dict) -> str:
    """In the dispatcher's transaction: the order for this attempt of the mission, stored (once) so that a re-send
    after a restart sends the same order. Returns its orderId."""
    cur.execute("SELECT lat, lon FROM vehicle_state WHERE vehicle_id = %s AND lat IS NOT NULL", (identity.vehicle_id,))
    row = cur.fetchone()
    order = vda5050.build_order(identity, mission, (row["lat"], row["lon"]) if row else None)
    cur.execute("INSERT INTO vda5050_orders (order_id, mission_id, attempt, vehicle_id, message, action_ids, "
                "last_node_id) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (mission_id, attempt) DO NOTHING",
                (order.order_id, str(mission["id"]), mission.get("attempt") or 1, identity.vehicle_id,
                 json.dumps(order.message, separators=(",", ":")), order.action_ids, order.last_node_id))
    return order.order_id


class VdaOutbound:
    def __init__(self, db: Database, emqx: EmqxApi) -> None:
        self.db = db
        self.emqx = emqx

    def send_order(self, order_id: str) -> bool:
        """Publish a stored order with the next headerId; returns whether a session received it."""
        with self.db.transaction() as cur:
            cur.execute("UPDATE vda5050_orders SET sends = sends + 1, last_sent_at = now() WHERE order_id = %s "
                        "RETURNING vehicle_id, message, sends", (order_id,))
            row = cur.fetchone()
            identity = vda5050.identity_of(cur, row["vehicle_id"])
            assert identity is not None
            message = vda5050.order_message(
                identity, vda5050.next_header_id(cur, identity.vehicle_id, topics.VdaSubtopic.ORDER), row["message"])
        return self._publish(identity.topic(topics.VdaSubtopic.ORDER), message, "vda5050.order_sent",
                             vehicle=identity.vehicle_id, order=order_id, attempt=row["sends"])

    def send_instant_action(self, identity: vda5050.Identity, action_type: str, mission_id: str | None = None,
                            params: dict | None = None) -> bool:
        """Publish one instant action (recorded first, so its state can confirm it)."""
        action = vda5050.action(action_type, params)
        with self.db.transaction() as cur:
            cur.execute("INSERT INTO vda5050_instant_actions (action_id, vehicle_id, action_type, mission_id) "
                        "VALUES (%s, %s, %s, %s)", (action["actionId"], identity.vehicle_id, action_type, mission_id))
            message = vda5050.instant_actions_message(
                identity, vda5050.next_header_id(cur, identity.vehicle_id, topics.VdaSubtopic.INSTANT_ACTIONS),
                [action])
        return self._publish(identity.topic(topics.VdaSubtopic.INSTANT_ACTIONS), message,
                             f"vda5050.{action_type}_sent", vehicle=identity.vehicle_id, mission=mission_id,
                             action_id=action["actionId"])

    def resend_unseen_orders(self) -> int:
        """Send again every order of a still-dispatched mission that no state has named, to online vehicles."""
        with self.db.transaction() as cur:
            cur.execute("""
                SELECT o.order_id FROM vda5050_orders o
                  JOIN missions m ON m.id = o.mission_id AND m.state = 'dispatched'
                  JOIN vehicle_state s ON s.vehicle_id = o.vehicle_id AND s.online
                 WHERE o.seen_at IS NULL AND o.last_sent_at < now() - make_interval(secs => %s)
                 ORDER BY o.last_sent_at LIMIT 500""", (ORDER_RESEND_S,))
            due = [row["order_id"] for row in cur.fetchall()]
        for order_id in due:
            self.send_order(order_id)
        return len(due)

    def _publish(self, topic: str, message: dict, event: str, **fields) -> bool:
        try:
            delivered = self.emqx.publish(topic, message, qos=QOS).delivered
        except EmqxApiError as exc:
            log_event(log, event.replace("_sent", "_not_sent"), logging.WARNING, error=str(exc), **fields)
            return False
        log_event(log, event, delivered=delivered, header_id=message["headerId"], **fields)
        return delivered



def identity_of(db: Database, vehicle_id: str) -> vda5050.Identity | None:
    with db.transaction() as cur:
        return vda5050.identity_of(cur, vehicle_id)


# An operator's mission command, in VDA 5050 (api/dispatcher.py send_mission_command).
MISSION_COMMAND_ACTIONS = {"cancel": "cancelOrder", "pause": "startPause", "resume": "stopPause"}
# An emergency command (api/emergency_commands.py).
EMERGENCY_ACTIONS = {"stop": "startPause", "release": "stopPause"}
