"""The topic ACL of docs/PROTOCOL.md (Topic tree) as a pure function of identity and topic: no database, no state.

A ``vehicle`` may publish its own telemetry, status, mission and connection, and subscribe to its own cmd and
register/response and to the fleet-wide ``fleet/v1/_fleet/cmd``. An ``enrolling`` client (enrollment token only)
may publish its own register/request and subscribe to its own register/response. Everything else is denied:
wildcards, ``$SYS`` and other ``$`` topics (shared subscriptions included), other vehicles' topics, topics outside
the tree, an empty or unknown role, and a client whose client id is not its role's (``client_id_for``: the vehicle
id for a vehicle, ``_enroll-{vehicle id}`` for an enrolling client; the username is always the vehicle id).

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


# The only topic a vehicle publishes retained: its presence (ONLINE / OFFLINE / CONNECTIONBROKEN, also its Last Will).
# A retained telemetry, status or mission message would be stored by the broker and replayed to every subscriber.
# The same holds for a VDA 5050 vehicle: only its `connection` topic is retained (the standard's Last Will).
_RETAINABLE = frozenset({Kind.CONNECTION})
_VDA_RETAINABLE = frozenset({topics.VdaSubtopic.CONNECTION, topics.VdaSubtopic.FACTSHEET})


def decide(role: str, clientid: str, username: str, action: str, topic: str,
           retain: bool = False, vda: str = "") -> AclDecision:
    """May this client do ``action`` (publish | subscribe) on ``topic`` (a publish: with the retain flag)? ``vda``:
    the VDA identity, if any."""
    if role not in (ROLE_VEHICLE, ROLE_ENROLLING):
        return AclDecision(False, "unknown_role" if role else "no_role")
    if action not in ("publish", "subscribe"):
        return AclDecision(False, "unknown_action")
    # The vehicle id is the username; the client id must be the one its role connects with (topics module doc).
    if not topics.is_vehicle_id(username) or clientid != client_id_for(role, username):
        return AclDecision(False, "identity_mismatch")
    if topic.startswith("$"):
        return AclDecision(False, "system_topic")
    if "+" in topic or "#" in topic:
        return AclDecision(False, "wildcard")
    if vda:
        return _decide_vda(role, action, topic, vda, retain)
    parsed = topics.parse(topic)
    if parsed is None:
        return AclDecision(False, "outside_tree")
    if parsed.vehicle_id is None:  # fleet/v1/_fleet/cmd
        if role == ROLE_VEHICLE and action == "subscribe":
            return AclDecision(True, "fleet_commands")
        return AclDecision(False, "fleet_topic")
    if parsed.vehicle_id != username:
        return AclDecision(False, "other_vehicle")
    if parsed.kind in _ALLOWED[(role, action)]:
        if retain and action == "publish" and parsed.kind not in _RETAINABLE:
            return AclDecision(False, "retain_not_allowed")
        return AclDecision(True, "own_topic")
    return AclDecision(False, f"{role}_may_not_{action}_{parsed.kind.value.replace('/', '_')}")


def client_id_for(role: str, vehicle_id: str) -> str:
    """The client id a client of ``role`` connects with: the vehicle id, or its enrollment client id."""
    return topics.enrollment_client_id(vehicle_id) if role == ROLE_ENROLLING else vehicle_id


def _decide_vda(role: str, action: str, topic: str, vda: str, retain: bool) -> AclDecision:
    if role != ROLE_VEHICLE:
        return AclDecision(False, "vda_not_a_vehicle")
    parsed = topics.parse_vda(topic)
    if parsed is None:
        return AclDecision(False, "outside_vda_tree")
    if parsed.identity != vda:
        return AclDecision(False, "other_vehicle")
    allowed = topics.VDA_VEHICLE_PUBLISHES if action == "publish" else topics.VDA_VEHICLE_SUBSCRIBES
    if parsed.subtopic in allowed:
        if retain and action == "publish" and parsed.subtopic not in _VDA_RETAINABLE:
            return AclDecision(False, "retain_not_allowed")
        return AclDecision(True, "own_vda_topic")
    return AclDecision(False, f"vda_vehicle_may_not_{action}_{parsed.subtopic.value}")


def _publish_rules(names_retainable: list[str], names_plain: list[str]) -> list[dict[str, object]]:
    # EMQX's rule field "retain" (emqx_authz_rule_raw.erl): without it a rule allows retained publishes too
    rules: list[dict[str, object]] = []
    if names_retainable:
        rules.append({"permission": "allow", "action": "publish", "topics": names_retainable})
    if names_plain:
        rules.append({"permission": "allow", "action": "publish", "retain": False, "topics": names_plain})
    return rules


def session_rules(role: str, vehicle_id: str, vda: str = "") -> list[dict]:
    """The allow rules of ``decide`` for one client, as EMQX authn-answer ACL rules with literal topics."""
    if vda:
        manufacturer, serial_number = vda.split("/")
        publishes = sorted(topics.VDA_VEHICLE_PUBLISHES)
        return [*_publish_rules(
                    [topics.vda_topic(manufacturer, serial_number, s) for s in publishes if s in _VDA_RETAINABLE],
                    [topics.vda_topic(manufacturer, serial_number, s) for s in publishes if s not in _VDA_RETAINABLE]),
                {"permission": "allow", "action": "subscribe",
                 "topics": [topics.vda_topic(manufacturer, serial_number, s)
                            for s in sorted(topics.VDA_VEHICLE_SUBSCRIBES)]}]
    rules: list[dict[str, object]] = []
    for action in ("publish", "subscribe"):
        kinds = sorted(_ALLOWED[(role, action)])
        if action == "publish":
            names = [topics.vehicle_topic(vehicle_id, kind) for kind in kinds]
            rules += _publish_rules([n for n, kind in zip(names, kinds, strict=True) if kind in _RETAINABLE],
                                    [n for n, kind in zip(names, kinds, strict=True) if kind not in _RETAINABLE])
            continue
        names = [topics.vehicle_topic(vehicle_id, kind) for kind in kinds]
        if role == ROLE_VEHICLE:
            names.append(topics.fleet_command_topic())
        rules.append({"permission": "allow", "action": action, "topics": names})
    return rules
