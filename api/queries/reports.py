"""SQL for the mission report: one page of missions with their vehicle, state timestamps and durations, plus
summary counts over every mission that matches (not only the page)."""
from __future__ import annotations


def filters(visible: list[str] | None, args: dict, cursor: tuple[str, str] | None = None) -> tuple[str, dict]:
    where: list[str] = ["TRUE"]
    params: dict[str, object] = {}
    if visible is not None:
        where.append("m.fleet_id = ANY(%(visible)s)")
        params["visible"] = visible
    for column, key in (("m.vehicle_id", "vehicle_id"), ("m.fleet_id", "fleet_id"), ("m.state", "state")):
        if args.get(key):
            where.append(f"{column} = %({key})s")
            params[key] = args[key]
    if args.get("from_"):
        where.append("m.created_at >= %(from_)s")
        params["from_"] = args["from_"]
    if args.get("to"):
        where.append("m.created_at < %(to)s")
        params["to"] = args["to"]
    if cursor:
        where.append("(m.created_at, m.id) > (%(c_at)s::timestamptz, %(c_id)s::uuid)")
        params.update(c_at=cursor[0], c_id=cursor[1])
    return " AND ".join(where), params


def summary(cur, clause: str, params: dict) -> dict:
    cur.execute(f"SELECT m.state, count(*) AS n FROM missions m WHERE {clause} GROUP BY m.state",  # noqa: S608
                params)
    by_state = {row["state"]: row["n"] for row in cur.fetchall()}
    cur.execute(f"""
        SELECT m.vehicle_id, count(*) AS total, jsonb_object_agg(m.state, n) AS by_state
          FROM (SELECT m.vehicle_id, m.state, count(*) AS n FROM missions m WHERE {clause}
                 GROUP BY m.vehicle_id, m.state) m
         GROUP BY m.vehicle_id ORDER BY m.vehicle_id""", params)  # noqa: S608 - fixed fragments
    by_vehicle = [{"vehicle_id": row["vehicle_id"], "total": sum(row["by_state"].values()),
                   "by_state": row["by_state"]} for row in cur.fetchall()]
    cur.execute(f"""
        SELECT m.state, m.failure_reason, count(*) AS n FROM missions m
         WHERE {clause} AND m.failure_reason IS NOT NULL
         GROUP BY m.state, m.failure_reason ORDER BY n DESC LIMIT 50""", params)  # noqa: S608
    failures = [dict(row) for row in cur.fetchall()]
    return {"total": sum(by_state.values()), "by_state": by_state, "by_vehicle": by_vehicle,
            "failure_reasons": failures}


def page(cur, clause: str, params: dict, limit: int) -> list[dict]:
    cur.execute(f"""
        SELECT m.id, m.name, m.state, m.priority, m.created_by, m.created_at, m.dispatched_at, m.accepted_at,
               m.started_at, m.finished_at, m.failure_reason, m.progress_percent, m.progress_step,
               m.progress_eta_s,
               json_build_object('id', v.id, 'fleet_id', v.fleet_id, 'name', v.name, 'model', v.model,
                                 'status', v.status) AS vehicle,
               m.attempt, m.max_attempts,
               (SELECT jsonb_object_agg(t.to_state, t.first_at)
                  FROM (SELECT e.to_state, min(e.server_time) AS first_at FROM mission_events e
                         WHERE e.mission_id = m.id GROUP BY e.to_state) t) AS state_timestamps,
               (SELECT jsonb_object_agg(t.to_state, t.first_at)
                  FROM (SELECT e.to_state, min(e.device_time) AS first_at FROM mission_events e
                         WHERE e.mission_id = m.id AND e.device_time IS NOT NULL GROUP BY e.to_state) t)
                 AS device_timestamps,
               (SELECT jsonb_agg(a ORDER BY a.attempt) FROM (
                    SELECT e.attempt,
                           min(e.server_time) FILTER (WHERE e.event = 'dispatch') AS dispatched_at,
                           min(e.server_time) FILTER (WHERE e.to_state = 'accepted') AS accepted_at,
                           min(e.device_time) FILTER (WHERE e.to_state = 'accepted') AS accepted_device_time,
                           (array_agg(e.to_state ORDER BY e.id DESC) FILTER (WHERE s.terminal))[1] AS outcome,
                           max(e.server_time) FILTER (WHERE s.terminal) AS finished_at,
                           max(e.device_time) FILTER (WHERE s.terminal) AS finished_device_time,
                           (array_agg(e.detail ->> 'reason' ORDER BY e.id DESC) FILTER (WHERE s.terminal))[1]
                             AS reason
                      FROM mission_events e JOIN mission_states s ON s.state = e.to_state
                     WHERE e.mission_id = m.id GROUP BY e.attempt) a) AS attempts
          FROM missions m JOIN vehicles v ON v.id = m.vehicle_id
         WHERE {clause}
         ORDER BY m.created_at, m.id
         LIMIT %(limit)s""", {**params, "limit": limit + 1})  # noqa: S608 - fixed fragments
    return cur.fetchall()
