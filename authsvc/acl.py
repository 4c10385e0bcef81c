"""The topic ACL of docs/PROTOCOL.md (Topic tree) as a pure function of identity and topic: no database, no state.

A ``vehicle`` may publish its own telemetry, status, mission and connection, and subscribe to its own cmd and
register/response and to the fleet-wide ``fleet/v1/_fleet/cmd``. An ``enrolling`` client (enrollment token only)
may publish its own register/request and subscribe to its own register/response. Everything else is denied:
wildcards, ``$SYS`` and other ``$`` topics (shared subscriptions included), other vehicles' topics, topics outside
the tree, an empty or unknown role, and a client whose client id is not its role's (``client_id_for``: the vehicle
id for a vehicle, ``_enroll-{vehicle id}`` for an enrolling client; the username is always the vehicle id).

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
_RETAINABLE = frozenset({Kind.CONNECTION})


def decide(role: str, clientid: str, username: str, action: str, topic: str,
           retain: bool = False) -> AclDecision:
    """May this client do ``action`` (publish | subscribe) on ``topic`` (a publish: with the retain flag)?"""
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


def session_rules(role: str, vehicle_id: str) -> list[dict]:
    """The allow rules of ``decide`` for one client, as EMQX authn-answer ACL rules with literal topics."""
    rules: list[dict[str, object]] = []
    for action in ("publish", "subscribe"):
        kinds = sorted(_ALLOWED[(role, action)])
        if action == "publish":
            # EMQX's rule field "retain" (emqx_authz_rule_raw.erl): without it a rule allows retained publishes too
            plain = [topics.vehicle_topic(vehicle_id, kind) for kind in kinds if kind not in _RETAINABLE]
            retainable = [topics.vehicle_topic(vehicle_id, kind) for kind in kinds if kind in _RETAINABLE]
            if retainable:
                rules.append({"permission": "allow", "action": action, "topics": retainable})
            if plain:
                rules.append({"permission": "allow", "action": action, "retain": False, "topics": plain})
            continue
        names = [topics.vehicle_topic(vehicle_id, kind) for kind in kinds]
        if role == ROLE_VEHICLE:
            names.append(topics.fleet_command_topic())
        rules.append({"permission": "allow", "action": action, "topics": names})
    return rules
