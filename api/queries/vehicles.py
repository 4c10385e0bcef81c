"""SQL for reading vehicles with their latest state (position, health, presence)."""
from __future__ import annotations

from fleetcore import missions as mission_states

_SELECT = """
SELECT v.id, v.fleet_id, v.name, v.model, v.status, v.metadata, v.created_at, v.registered_at, v.revoked_at,
       v.decommissioned_at, v.desired_config, v.desired_config_version, v.reported_config,
       v.reported_config_version,
       COALESCE(s.online, false) AS online, s.connection_state, s.connected_at, s.disconnected_at,
       s.disconnect_reason, s.last_seen_at,
       s.telemetry_ts, s.telemetry_received_at, s.lat, s.lon, s.heading_deg, s.speed_mps, s.battery_pct,
       s.odometer_m,
       s.status_ts, s.mode, s.health, s.charging, s.estop, s.errors, s.sw_version,
       CASE WHEN vda.vehicle_id IS NULL THEN NULL ELSE json_build_object(
           'manufacturer', vda.manufacturer, 'serial_number', vda.serial_number, 'map_id', vda.map_id,
           'origin_lat', vda.origin_lat, 'origin_lon', vda.origin_lon) END AS vda5050,
       cert.serial_number AS cert_serial_number, cert.created_at AS cert_issued_at, cert.not_before AS cert_not_before,
       cert.not_after AS cert_not_after
       {distance}
  FROM vehicles v LEFT JOIN vehicle_state s ON s.vehicle_id = v.id
  LEFT JOIN vda5050_vehicles vda ON vda.vehicle_id = v.id
  LEFT JOIN vehicle_certificates cert ON cert.vehicle_id = v.id AND cert.revoked_at IS NULL
"""

# Great-circle distance in metres from (%(near_lat)s, %(near_lon)s) to the latest position (NULL if none).
_DISTANCE = """, 2 * 6371008.8 * asin(sqrt(power(sin(radians(s.lat - %(near_lat)s) / 2), 2)
       + cos(radians(%(near_lat)s)) * cos(radians(s.lat)) * power(sin(radians(s.lon - %(near_lon)s) / 2), 2)))
       AS distance_m"""

_SORTS = {
    "id": "v.id", "-id": "v.id DESC", "created_at": "v.created_at, v.id", "-created_at": "v.created_at DESC, v.id",
    "last_seen": "s.last_seen_at NULLS FIRST, v.id", "-last_seen": "s.last_seen_at DESC NULLS LAST, v.id",
    "battery": "s.battery_pct NULLS LAST, v.id", "-battery": "s.battery_pct DESC NULLS LAST, v.id",
    "odometer": "s.odometer_m NULLS LAST, v.id", "-odometer": "s.odometer_m DESC NULLS LAST, v.id",
    "distance": "distance_m NULLS LAST, v.id", "-distance": "distance_m DESC NULLS LAST, v.id",  # with near only
}


def shape(row: dict) -> dict:
    """A vehicle row as the API returns it (nested presence, telemetry, health, config)."""
    out = {k: row[k] for k in ("id", "fleet_id", "name", "model", "status", "metadata", "created_at",
                                "registered_at", "revoked_at", "decommissioned_at")}
    out["protocol"] = "vda5050" if row["vda5050"] else "fleet/v1"
    out["vda5050"] = row["vda5050"]
    out["certificate"] = None if row["cert_serial_number"] is None else {
        "serial_number": row["cert_serial_number"], "issued_at": row["cert_issued_at"],
        "not_before": row["cert_not_before"], "not_after": row["cert_not_after"]}
    out["presence"] = {k: row[k] for k in ("online", "connection_state", "connected_at", "disconnected_at",
                                           "disconnect_reason", "last_seen_at")}
    out["telemetry"] = {"ts": row["telemetry_ts"], "received_at": row["telemetry_received_at"],
                        **{k: row[k] for k in ("lat", "lon", "heading_deg", "speed_mps", "battery_pct",
                                               "odometer_m")}}
    out["health"] = {"ts": row["status_ts"], **{k: row[k] for k in ("mode", "health", "charging", "estop",
                                                                    "errors", "sw_version")}}
    out["config"] = {"desired": row["desired_config"], "desired_version": row["desired_config_version"],
                     "reported": row["reported_config"], "reported_version": row["reported_config_version"]}
    if "distance_m" in row:
        out["distance_m"] = row["distance_m"]
    return out


def get(cur, vehicle_id: str) -> dict | None:
    cur.execute(_SELECT.format(distance="") + " WHERE v.id = %(id)s", {"id": vehicle_id})
    return cur.fetchone()


def list_vehicles(cur, visible: list[str] | None, args: dict, near: tuple[float, float] | None,
                  limit: int, offset: int) -> tuple[list[dict], int]:
    where: list[str] = ["TRUE"]
    params: dict[str, object] = {}
    if visible is not None:
        where.append("v.fleet_id = ANY(%(visible)s)")
        params["visible"] = visible
    if args.get("fleet_id"):
        where.append("v.fleet_id = %(fleet_id)s")
        params["fleet_id"] = args["fleet_id"]
    if args.get("status"):
        where.append("v.status = %(status)s")
        params["status"] = args["status"]
    if args.get("online") is not None:
        where.append("COALESCE(s.online, false) = %(online)s")
        params["online"] = args["online"]
    if args.get("mode"):
        where.append("s.mode = %(mode)s")
        params["mode"] = args["mode"]
    clause = " AND ".join(where)
    cur.execute("SELECT count(*) AS n FROM vehicles v "  # noqa: S608 - fixed fragments, values are parameters
                f"LEFT JOIN vehicle_state s ON s.vehicle_id = v.id WHERE {clause}", params)
    total = cur.fetchone()["n"]
    if near:
        params.update(near_lat=near[0], near_lon=near[1])
    order = _SORTS[args.get("sort") or ("distance" if near else "id")]
    params.update(limit=limit, offset=offset)
    cur.execute(_SELECT.format(distance=_DISTANCE if near else "")
                + f" WHERE {clause} ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s", params)
    return cur.fetchall(), total


def get_brief(cur, vehicle_id: str) -> dict | None:
    """id, fleet_id and status only."""
    cur.execute("SELECT id, fleet_id, status FROM vehicles WHERE id = %s", (vehicle_id,))
    return cur.fetchone()


def fleet_latest_json(cur, visible: list[str] | None, fleet: str | None) -> str:
    """Latest position, health and presence of every vehicle, as one JSON document built by PostgreSQL
    (10,000 vehicles serialise in tens of milliseconds this way)."""
    cur.execute("""
        SELECT json_build_object('count', count(*), 'items', COALESCE(json_agg(json_build_object(
                 'vehicle_id', v.id, 'fleet_id', v.fleet_id, 'online', COALESCE(s.online, false),
                 'last_seen_at', s.last_seen_at,
                 'telemetry', json_build_object('ts', s.telemetry_ts, 'received_at', s.telemetry_received_at,
                     'lat', s.lat, 'lon', s.lon, 'heading_deg', s.heading_deg, 'speed_mps', s.speed_mps,
                     'battery_pct', s.battery_pct, 'odometer_m', s.odometer_m),
                 'health', json_build_object('ts', s.status_ts, 'mode', s.mode, 'health', s.health,
                     'charging', s.charging, 'estop', s.estop, 'errors', s.errors, 'sw_version', s.sw_version)
               ) ORDER BY v.id), '[]'::json))::text AS doc
          FROM vehicles v LEFT JOIN vehicle_state s ON s.vehicle_id = v.id
         WHERE v.status <> 'decommissioned'
           AND (%(visible)s::text[] IS NULL OR v.fleet_id = ANY(%(visible)s::text[]))
           AND (%(fleet)s::text IS NULL OR v.fleet_id = %(fleet)s::text)""",
                {"visible": visible, "fleet": fleet})
    return cur.fetchone()["doc"]


def update_details(cur, vehicle_id: str, changes: dict) -> None:
    """Set name, model and/or metadata (the keys present in ``changes``)."""
    columns = [name for name in ("name", "model", "metadata") if name in changes]
    if columns:
        assignments = ", ".join(f"{name} = %({name})s" for name in columns)
        cur.execute(f"UPDATE vehicles SET {assignments} WHERE id = %(id)s",  # noqa: S608 - fixed column names
                    {**changes, "id": vehicle_id})


def set_desired_config(cur, vehicle_id: str, config: dict) -> int:
    """Store the desired configuration and return its version; the version only moves when the configuration
    changes, so a retried PUT re-sends the same version."""
    cur.execute("""
        UPDATE vehicles
           SET desired_config_version = desired_config_version + CASE WHEN desired_config = %(config)s::jsonb
                                                                      THEN 0 ELSE 1 END,
               desired_config = %(config)s::jsonb
         WHERE id = %(id)s
     RETURNING desired_config_version""", {"config": config, "id": vehicle_id})
    return cur.fetchone()["desired_config_version"]


def open_missions(cur, vehicle_id: str) -> tuple[list[str], list[str]]:
    """(ids of its queued missions, ids of the missions it is working on), locked."""
    cur.execute("SELECT id::text, state FROM missions WHERE vehicle_id = %s AND state = ANY(%s) ORDER BY created_at "
                "FOR UPDATE", (vehicle_id, list(mission_states.OPEN)))
    rows = cur.fetchall()
    return ([r["id"] for r in rows if r["state"] == mission_states.QUEUED],
            [r["id"] for r in rows if r["state"] != mission_states.QUEUED])
