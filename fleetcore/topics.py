"""The MQTT topic tree — docs/PROTOCOL.md (Topic tree). Topic strings are built and parsed here and nowhere else.

    fleet/v1/{vehicle_id}/telemetry | status | mission | connection      vehicle → backend
    fleet/v1/{vehicle_id}/register/request                               vehicle (enrolling) → backend
    fleet/v1/{vehicle_id}/register/response | cmd                        backend → vehicle
    fleet/v1/_fleet/cmd                                                  backend → every vehicle

Client ids: a vehicle connects as ``{vehicle_id}``; while enrolling it connects as ``_enroll-{vehicle_id}``
(``enrollment_client_id``), never as the vehicle, so an enrollment token can neither resume nor take over the
vehicle's persistent session (docs/PROTOCOL.md, Connecting). Names starting with ``_`` are never vehicle ids.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

PREFIX = "fleet/v1"
FLEET_WIDE = "_fleet"
ENROLLMENT_CLIENT_PREFIX = "_enroll-"
VEHICLE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9-]{0,63}"
_VEHICLE_ID = re.compile(VEHICLE_ID_PATTERN)


class Kind(StrEnum):
    TELEMETRY = "telemetry"
    STATUS = "status"
    MISSION = "mission"
    CONNECTION = "connection"
    CMD = "cmd"
    REGISTER_REQUEST = "register/request"
    REGISTER_RESPONSE = "register/response"


def is_vehicle_id(value: str) -> bool:
    # fullmatch, not match with ``$``: ``$`` also matches before a trailing newline, which the database refuses
    return bool(_VEHICLE_ID.fullmatch(value))


def enrollment_client_id(vehicle_id: str) -> str:
    """The MQTT client id an enrolling vehicle must use: its own session, distinct from the vehicle's."""
    if not is_vehicle_id(vehicle_id):
        raise ValueError(f"not a valid vehicle id: {vehicle_id!r}")
    return ENROLLMENT_CLIENT_PREFIX + vehicle_id


def is_enrollment_client_of(clientid: str, vehicle_id: str) -> bool:
    return is_vehicle_id(vehicle_id) and clientid == ENROLLMENT_CLIENT_PREFIX + vehicle_id


def vehicle_topic(vehicle_id: str, kind: Kind) -> str:
    if not is_vehicle_id(vehicle_id):
        raise ValueError(f"not a valid vehicle id: {vehicle_id!r}")
    return f"{PREFIX}/{vehicle_id}/{kind.value}"


def fleet_command_topic() -> str:
    return f"{PREFIX}/{FLEET_WIDE}/cmd"


@dataclass(frozen=True)
class ParsedTopic:
    vehicle_id: str | None   # None for the fleet-wide topic
    kind: Kind


def parse(topic: str) -> ParsedTopic | None:
    """The vehicle and kind of a topic in the tree, or None for anything else (wildcards included)."""
    prefix = PREFIX + "/"
    if not topic.startswith(prefix):
        return None
    owner, _, rest = topic[len(prefix):].partition("/")
    try:
        kind = Kind(rest)
    except ValueError:
        return None
    if owner == FLEET_WIDE:
        return ParsedTopic(None, kind) if kind is Kind.CMD else None
    if not is_vehicle_id(owner):
        return None
    return ParsedTopic(owner, kind)
