"""The capability sheet: what a vehicle says it can do (docs/PROTOCOL.md, Capability sheet), and the one rule
that refuses a mission it cannot do.

A sheet is a JSON object. Four keys are understood and typed (sql/042_vehicle_capabilities.sql); any other key is
kept in the stored document untouched, so a richer sheet (a VDA 5050 factsheet mapped onto this one, say) loses
nothing:

* ``task_types`` — the task ``type`` values it performs (a list of strings);
* ``max_payload_kg`` — the most it carries;
* ``max_speed_mps`` — its top speed;
* ``battery_capacity_wh`` — its battery (informational: shown, not checked).

A key that is absent is not checked. A vehicle reports its sheet with registration (``data.capabilities`` of
``register/request``); each different sheet is a new version, and the api shows the current one and the history.
Used by authsvc (validate and store at registration) and the api (check a mission at creation).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_DOCUMENT_BYTES = 16 * 1024
MAX_TASK_TYPES = 200
NUMBERS = ("max_payload_kg", "max_speed_mps", "battery_capacity_wh")


class InvalidSheet(ValueError):
    """The sheet breaks its schema; the message names the field."""


@dataclass(frozen=True)
class Sheet:
    document: dict[str, Any]
    task_types: tuple[str, ...] | None
    max_payload_kg: float | None
    max_speed_mps: float | None
    battery_capacity_wh: float | None


def parse(document: Any) -> Sheet:
    """Validate a sheet as a vehicle sent it; raises InvalidSheet."""
    if not isinstance(document, dict):
        raise InvalidSheet("capabilities must be an object")
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    if "\x00" in text or "\\u0000" in text:
        raise InvalidSheet("capabilities must not contain NUL characters")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidSheet("capabilities must be valid Unicode (no lone surrogates)") from None
    if size > MAX_DOCUMENT_BYTES:
        raise InvalidSheet(f"capabilities must be at most {MAX_DOCUMENT_BYTES} bytes of JSON")
    task_types = document.get("task_types")
    if task_types is not None:
        if not isinstance(task_types, list) or len(task_types) > MAX_TASK_TYPES or not all(
                isinstance(t, str) and 1 <= len(t) <= 64 and "\x00" not in t for t in task_types):
            raise InvalidSheet(f"capabilities.task_types must be a list of at most {MAX_TASK_TYPES} strings of "
                               "1–64 characters")
        task_types = tuple(task_types)
    numbers = {}
    for name in NUMBERS:
        value = document.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not 0 <= value <= 1e9):
            raise InvalidSheet(f"capabilities.{name} must be a number from 0 to 1e9")
        numbers[name] = None if value is None else float(value)
    return Sheet(document, task_types, **numbers)


def mission_problem(sheet: dict | None, mission: dict) -> tuple[str, str] | None:
    """The capability a mission needs beyond the vehicle's current sheet, as (capability, explanation), or None.

    ``sheet`` is the stored row (task_types, max_payload_kg, max_speed_mps) or None when the vehicle has reported
    none (then nothing is checked); ``mission`` is the create request."""
    if sheet is None:
        return None
    if sheet["task_types"] is not None:
        unknown = sorted({t["type"] for t in mission.get("tasks") or []} - set(sheet["task_types"]))
        if unknown:
            return "task_types", f"the vehicle does not perform task type(s) {', '.join(unknown)}"
    payload = mission.get("payload_kg")
    if sheet["max_payload_kg"] is not None and payload is not None and payload > sheet["max_payload_kg"]:
        return "max_payload_kg", (f"payload {payload:g} kg exceeds the vehicle's max_payload_kg "
                                  f"{sheet['max_payload_kg']:g}")
    if sheet["max_speed_mps"] is not None:
        fastest = max((w["speed_mps"] for w in mission.get("waypoints") or [] if w.get("speed_mps") is not None),
                      default=None)
        if fastest is not None and fastest > sheet["max_speed_mps"]:
            return "max_speed_mps", (f"a waypoint asks for {fastest:g} m/s; the vehicle's max_speed_mps is "
                                     f"{sheet['max_speed_mps']:g}")
    return None


def store(cur, vehicle_id: str, sheet: Sheet, source: str) -> int:
    """Record the sheet as the vehicle's current one; a new version only when the document changed. Returns the
    current version."""
    cur.execute("""
        SELECT c.version, c.document = %(document)s::jsonb AS same FROM vehicles v
          JOIN vehicle_capabilities c ON c.vehicle_id = v.id AND c.version = v.capabilities_version
         WHERE v.id = %(vehicle_id)s""", {"vehicle_id": vehicle_id, "document": json.dumps(sheet.document)})
    current = cur.fetchone()
    if current is not None and current["same"]:
        return current["version"]
    cur.execute("""
        INSERT INTO vehicle_capabilities (vehicle_id, version, document, task_types, max_payload_kg, max_speed_mps,
                                          battery_capacity_wh, source)
        SELECT %(vehicle_id)s, COALESCE(max(version), 0) + 1, %(document)s::jsonb, %(task_types)s, %(max_payload_kg)s,
               %(max_speed_mps)s, %(battery_capacity_wh)s, %(source)s
          FROM vehicle_capabilities WHERE vehicle_id = %(vehicle_id)s
        RETURNING version""", {
        "vehicle_id": vehicle_id, "document": json.dumps(sheet.document),
        "task_types": list(sheet.task_types) if sheet.task_types is not None else None,
        "max_payload_kg": sheet.max_payload_kg, "max_speed_mps": sheet.max_speed_mps,
        "battery_capacity_wh": sheet.battery_capacity_wh, "source": source})
    version = cur.fetchone()["version"]
    cur.execute("UPDATE vehicles SET capabilities_version = %s WHERE id = %s", (version, vehicle_id))
    return version


def current(cur, vehicle_id: str) -> dict | None:
    """The vehicle's current sheet row, or None if it reported none."""
    cur.execute("""
        SELECT c.version, c.document, c.task_types, c.max_payload_kg, c.max_speed_mps, c.battery_capacity_wh,
               c.source, c.reported_at
          FROM vehicles v JOIN vehicle_capabilities c ON c.vehicle_id = v.id AND c.version = v.capabilities_version
         WHERE v.id = %s""", (vehicle_id,))
    return cur.fetchone()


def history(cur, vehicle_id: str) -> list[dict]:
    cur.execute("SELECT version, document, task_types, max_payload_kg, max_speed_mps, battery_capacity_wh, source, "
                "reported_at FROM vehicle_capabilities WHERE vehicle_id = %s ORDER BY version DESC", (vehicle_id,))
    return cur.fetchall()
