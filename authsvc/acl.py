"""The topic ACL of docs/PROTOCOL.md (Topic tree) as a pure function of identity and topic: no database, no state.

A ``vehicle`` may publish its own telemetry, status, mission and connection, and subscribe to its own cmd and
register/response and to the fleet-wide ``fleet/v1/_fleet/cmd``. An ``enrolling`` client (enrollment token only)
may publish its own register/request and subscribe to its own register/response. Everything else is denied:
wildcards, ``$SYS`` and other ``$`` topics (shared subscriptions included), other vehicles' topics, topics outside
the tree, an empty or unknown role, and a client whose clientid and username differ.

A VDA 5050 vehicle (docs/VDA5050.md) is a ``vehicle`` whose authn answer carries the client attribute ``vda``
(``manufacturer/serialNumber``, from the database at login). It may use only its own VDA topics, in the standard's
direction: publish ``uagv/v2/{vda}/state | connection | factsheet | visualization``, subscribe
``uagv/v2/{vda}/order | instantActions``. Nothing of ``fleet/v1`` — it does not speak our protocol.

``session_rules`` turns the same table into the ``acl`` list of the authn answer (EMQX 5.8+ attaches it to the
session and checks it before the HTTP source): a connected vehicle's own topics are then allowed without a
callout — it keeps working through an authsvc outage — while everything else still comes here and is denied.

The role comes from the authn answer's ``client_attrs.role`` (the broker sends it with every authz request);
authn only hands out a role after verifying the credential, so the decision needs nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass

from fleetcore import topics
from fleetcore.registry import ROLE_ENROLLING, ROLE_VEHICLE

Kind = topics.Kind

_ALLOWED: dict[tuple[str, str], frozenset[Kind]] = {
    (ROLE_VEHICLE, "publish"): frozenset({Kind.TELEMETRY, Kind.STATUS, Kind.MISSION, Kind.CONNECTION}),
    (ROLE_VEHICLE, "subscribe"): frozenset({Kind.CMD, Kind.REGISTER_RESPONSE}),
    (ROLE_ENROLLING, "publish"): frozenset({Kind.REGISTER_REQUEST}),
    (ROLE_ENROLLING, "subscribe"): frozenset({Kind.REGISTER_RESPONSE}),
}


@dataclass(frozen=True)
class AclDecision:
    allow: bool
    reason: str


def decide(role: str, clientid: str, username: str, action: str, topic: str, vda: str = "") -> AclDecision:
    """May this client do ``action`` (publish | subscribe) on ``topic``? ``vda``: the VDA identity, if any."""
    if role not in (ROLE_VEHICLE, ROLE_ENROLLING):
        return AclDecision(False, "unknown_role" if role else "no_role")
    if action not in ("publish", "subscribe"):
        return AclDecision(False, "unknown_action")
    if clientid != username or not topics.is_vehicle_id(clientid):
        return AclDecision(False, "identity_mismatch")
    if topic.startswith("$"):
        return AclDecision(False, "system_topic")
    if "+" in topic or "#" in topic:
        return AclDecision(False, "wildcard")
    if vda:
        return _decide_vda(role, action, topic, vda)
    parsed = topics.parse(topic)
    if parsed is None:
        return AclDecision(False, "outside_tree")
    if parsed.vehicle_id is None:  # fleet/v1/_fleet/cmd
        if role == ROLE_VEHICLE and action == "subscribe":
            return AclDecision(True, "fleet_commands")
        return AclDecision(False, "fleet_topic")
    if parsed.vehicle_id != clientid:
        return AclDecision(False, "other_vehicle")
    if parsed.kind in _ALLOWED[(role, action)]:
        return AclDecision(True, "own_topic")
    return AclDecision(False, f"{role}_may_not_{action}_{parsed.kind.value.replace('/', '_')}")


def _decide_vda(role: str, action: str, topic: str, vda: str) -> AclDecision:
    if role != ROLE_VEHICLE:
        return AclDecision(False, "vda_not_a_vehicle")
    parsed = topics.parse_vda(topic)
    if parsed is None:
        return AclDecision(False, "outside_vda_tree")
    if parsed.identity != vda:
        return AclDecision(False, "other_vehicle")
    allowed = topics.VDA_VEHICLE_PUBLISHES if action == "publish" else topics.VDA_VEHICLE_SUBSCRIBES
    if parsed.subtopic in allowed:
        return AclDecision(True, "own_vda_topic")
    return AclDecision(False, f"vda_vehicle_may_not_{action}_{parsed.subtopic.value}")


def session_rules(role: str, vehicle_id: str, vda: str = "") -> list[dict]:
    """The allow rules of ``decide`` for one client, as EMQX authn-answer ACL rules with literal topics."""
    if vda:
        manufacturer, serial_number = vda.split("/")
        return [{"permission": "allow", "action": action,
                 "topics": [topics.vda_topic(manufacturer, serial_number, subtopic) for subtopic in sorted(allowed)]}
                for action, allowed in (("publish", topics.VDA_VEHICLE_PUBLISHES),
                                        ("subscribe", topics.VDA_VEHICLE_SUBSCRIBES))]
    rules = []
    for action in ("publish", "subscribe"):
        names = [topics.vehicle_topic(vehicle_id, kind) for kind in sorted(_ALLOWED[(role, action)])]
        if role == ROLE_VEHICLE and action == "subscribe":
            names.append(topics.fleet_command_topic())
        rules.append({"permission": "allow", "action": action, "topics": names})
    return rules
