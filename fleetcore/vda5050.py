"""The VDA 5050 2.0 profile (docs/VDA5050.md): what the api sends a VDA vehicle, and the official JSON schemas the
ingest validates what it receives against.

Inbound messages (state, connection, factsheet) are validated and applied in SQL (sql/code/26_vda5050.sql), like
every other vehicle message. Outbound ones are built here: an ``order`` from a mission (nodes and edges from its
waypoints, its tasks as actions on the last node) and ``instantActions`` (cancelOrder, startPause, stopPause).
``headerId`` counts per vehicle and topic in the database, so it keeps increasing across restarts.

Coordinates: the backend stores latitude/longitude; a VDA vehicle drives in the metres of its map (x east, y
north). Each VDA vehicle has a map origin (sql/060_vda5050.sql) and the two are related by the local
equirectangular projection below — exact enough over a site of a few kilometres, and the same formula as the SQL
side's inverse (``ingest.vda5050_to_lat_lon``).
"""
from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from fleetcore import topics

VERSION = "2.0.0"
EARTH_RADIUS_M = 6371008.8
SCHEMA_NAMES = ("connection", "state", "order", "instantActions", "factsheet", "visualization")
# The official schemas come from an installed package (a dependency in pyproject.toml); nothing is fetched.
SCHEMA_DISTRIBUTION = "vda5050-sdk"
SCHEMA_DIRECTORY = "vda5050/validation/schemas"


@dataclass(frozen=True)
class Identity:
    vehicle_id: str
    manufacturer: str
    serial_number: str
    map_id: str
    origin_lat: float
    origin_lon: float

    def topic(self, subtopic: topics.VdaSubtopic) -> str:
        return topics.vda_topic(self.manufacturer, self.serial_number, subtopic)

    def to_map(self, lat: float, lon: float) -> tuple[float, float]:
        """(x, y) in metres on the vehicle's map for a latitude/longitude."""
        x = math.radians(lon - self.origin_lon) * EARTH_RADIUS_M * math.cos(math.radians(self.origin_lat))
        y = math.radians(lat - self.origin_lat) * EARTH_RADIUS_M
        return round(x, 3), round(y, 3)


def identity_of(cur, vehicle_id: str) -> Identity | None:
    """The vehicle's VDA identity, or None when it speaks our own protocol."""
    cur.execute("SELECT vehicle_id, manufacturer, serial_number, map_id, origin_lat, origin_lon "
                "FROM vda5050_vehicles WHERE vehicle_id = %s", (vehicle_id,))
    row = cur.fetchone()
    return Identity(**row) if row else None


def next_header_id(cur, vehicle_id: str, subtopic: topics.VdaSubtopic) -> int:
    cur.execute("INSERT INTO vda5050_header_ids AS h (vehicle_id, topic, last_header_id) VALUES (%s, %s, 0) "
                "ON CONFLICT (vehicle_id, topic) DO UPDATE SET last_header_id = h.last_header_id + 1 "
                "RETURNING last_header_id", (vehicle_id, subtopic.value))
    return int(cur.fetchone()["last_header_id"])


def timestamp() -> str:
    """ISO 8601 with milliseconds and Z, as the standard's examples write it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def header(identity: Identity, header_id: int) -> dict[str, Any]:
    return {"headerId": header_id, "timestamp": timestamp(), "version": VERSION,
            "manufacturer": identity.manufacturer, "serialNumber": identity.serial_number}


def action(action_type: str, params: dict[str, Any] | None = None, blocking: str = "HARD",
           action_id: str | None = None) -> dict[str, Any]:
    return {"actionType": action_type, "actionId": action_id or str(uuid.uuid4()), "blockingType": blocking,
            "actionParameters": [{"key": key, "value": value} for key, value in (params or {}).items()]}


@dataclass(frozen=True)
class Order:
    order_id: str
    message: dict[str, Any]       # without header: headerId and timestamp are set at each send
    action_ids: list[str]
    last_node_id: str


def build_order(identity: Identity, mission: dict, start: tuple[float, float] | None) -> Order:
    """The order for one attempt of a mission. ``start``: the vehicle's current (lat, lon), if known.

    Nodes: the vehicle's current position first (the standard wants an order to begin where the vehicle stands; with
    no known position the node has no nodePosition, which the standard allows), then one per waypoint. Edges join
    them in order, with the waypoint's speed as maxSpeed. sequenceId runs 0, 1, 2 … across nodes (even) and edges
    (odd). Every node and edge is released: the whole mission is the base, there is no horizon. The mission's tasks
    become actions on the last node, in order, HARD-blocking (done standing still, one after the other)."""
    order_id = f"{mission['id']}.{mission.get('attempt') or 1}"
    nodes: list[dict[str, Any]] = []
    start_node: dict[str, Any] = {"nodeId": f"{order_id}-start", "sequenceId": 0, "released": True, "actions": []}
    if start is not None:
        x, y = identity.to_map(*start)
        start_node["nodePosition"] = {"x": x, "y": y, "mapId": identity.map_id}
    nodes.append(start_node)
    for index, waypoint in enumerate(mission["waypoints"], start=1):
        x, y = identity.to_map(waypoint["lat"], waypoint["lon"])
        node: dict[str, Any] = {"nodeId": f"{order_id}-wp{index}", "sequenceId": 2 * index, "released": True,
                                "nodePosition": {"x": x, "y": y, "mapId": identity.map_id}, "actions": []}
        if waypoint.get("name"):
            node["nodeDescription"] = waypoint["name"]
        nodes.append(node)
    actions = [action(task["type"], task.get("params")) for task in mission["tasks"]]
    nodes[-1]["actions"] = actions
    edges = []
    for index in range(1, len(nodes)):
        edge: dict[str, Any] = {"edgeId": f"{order_id}-e{index}", "sequenceId": 2 * index - 1, "released": True,
                                "startNodeId": nodes[index - 1]["nodeId"], "endNodeId": nodes[index]["nodeId"],
                                "actions": []}
        speed = mission["waypoints"][index - 1].get("speed_mps")
        if speed:
            edge["maxSpeed"] = speed
        edges.append(edge)
    message = {"orderId": order_id, "orderUpdateId": 0, "nodes": nodes, "edges": edges}
    return Order(order_id, message, [a["actionId"] for a in actions], nodes[-1]["nodeId"])


def order_message(identity: Identity, header_id: int, body: dict[str, Any]) -> dict[str, Any]:
    return {**header(identity, header_id), **body}


def instant_actions_message(identity: Identity, header_id: int, actions: list[dict[str, Any]]) -> dict[str, Any]:
    """2.0 names the list ``actions``; 1.1 named it ``instantActions``, and so does vda-5050-lib 1.4.0 for 2.0 (it
    drops a message without it). Both carry the same list: the official schema allows the extra key, and a vehicle
    reads the one it knows (docs/VDA5050.md, Interop findings)."""
    return {**header(identity, header_id), "actions": actions, "instantActions": actions}


# -- the official schemas -------------------------------------------------------------------------------------------
def schema_documents() -> dict[str, tuple[dict, str]]:
    """``{name: (schema, source)}`` from the installed package. Raises PackageNotFoundError without it."""
    distribution = metadata.distribution(SCHEMA_DISTRIBUTION)
    source = f"{SCHEMA_DISTRIBUTION} {distribution.version}"
    documents = {}
    for name in SCHEMA_NAMES:
        path = Path(str(distribution.locate_file(f"{SCHEMA_DIRECTORY}/{name}.json")))
        documents[name] = (json.loads(path.read_text(encoding="utf-8")), source)
    return documents


def sync_schemas(cur) -> int:
    """Store the installed schemas in vda5050_schemas (only what changed); returns how many rows changed."""
    changed = 0
    for name, (document, source) in schema_documents().items():
        cur.execute("INSERT INTO vda5050_schemas AS s (name, document, source) VALUES (%s, %s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET document = EXCLUDED.document, source = EXCLUDED.source, "
                    "loaded_at = now() WHERE s.document IS DISTINCT FROM EXCLUDED.document "
                    "OR s.source IS DISTINCT FROM EXCLUDED.source",
                    (name, json.dumps(document), source))
        changed += cur.rowcount
    return changed
