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


# -- VDA 5050 (docs/VDA5050.md) ---------------------------------------------------------------------------------
# uagv/v2/{manufacturer}/{serialNumber}/{subtopic}: the standard's topic tree (interfaceName "uagv", major version
# "v2"). A VDA vehicle's MQTT client id and username stay our vehicle id; its manufacturer and serial number are
# the vehicle's VDA identity (sql/060_vda5050.sql), handed to the broker as the client attribute ``vda``.
VDA_PREFIX = "uagv/v2"
VDA_IDENTITY_LEVEL = r"[A-Za-z0-9_.:-]{1,64}"
_VDA_LEVEL = re.compile(VDA_IDENTITY_LEVEL)


class VdaSubtopic(StrEnum):
    ORDER = "order"
    INSTANT_ACTIONS = "instantActions"
    STATE = "state"
    CONNECTION = "connection"
    FACTSHEET = "factsheet"
    VISUALIZATION = "visualization"


# The direction the standard gives each subtopic: the vehicle publishes these …
VDA_VEHICLE_PUBLISHES = frozenset({VdaSubtopic.STATE, VdaSubtopic.CONNECTION, VdaSubtopic.FACTSHEET,
                                   VdaSubtopic.VISUALIZATION})
# … and subscribes to these (master control publishes them).
VDA_VEHICLE_SUBSCRIBES = frozenset({VdaSubtopic.ORDER, VdaSubtopic.INSTANT_ACTIONS})


def is_vda_identity_level(value: str) -> bool:
    return bool(_VDA_LEVEL.fullmatch(value))


def vda_topic(manufacturer: str, serial_number: str, subtopic: VdaSubtopic) -> str:
    if not (is_vda_identity_level(manufacturer) and is_vda_identity_level(serial_number)):
        raise ValueError(f"not a valid VDA 5050 identity: {manufacturer!r}/{serial_number!r}")
    return f"{VDA_PREFIX}/{manufacturer}/{serial_number}/{subtopic.value}"


def vda_identity(manufacturer: str, serial_number: str) -> str:
    """The vehicle's ``manufacturer/serialNumber`` as one string: the broker's client attribute ``vda``."""
    return f"{manufacturer}/{serial_number}"


@dataclass(frozen=True)
class ParsedVdaTopic:
    manufacturer: str
    serial_number: str
    subtopic: VdaSubtopic

    @property
    def identity(self) -> str:
        return vda_identity(self.manufacturer, self.serial_number)


def parse_vda(topic: str) -> ParsedVdaTopic | None:
    """The identity and subtopic of a VDA 5050 topic, or None for anything else (wildcards included)."""
    prefix = VDA_PREFIX + "/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix):].split("/")
    if len(parts) != 3 or not all(is_vda_identity_level(level) for level in parts[:2]):
        return None
    try:
        return ParsedVdaTopic(parts[0], parts[1], VdaSubtopic(parts[2]))
    except ValueError:
        return None
