"""SQL for fleets."""
from __future__ import annotations

_SELECT = """
SELECT f.id, f.name, f.created_at, f.dispatch_min_battery_pct,
       (SELECT count(*) FROM vehicles v WHERE v.fleet_id = f.id) AS vehicle_count
  FROM fleets f
"""


def list_fleets(cur, visible: list[str] | None, limit: int, offset: int) -> tuple[list[dict], int]:
    where, params = ("", []) if visible is None else (" WHERE f.id = ANY(%s)", [visible])
    cur.execute("SELECT count(*) AS n FROM fleets f" + where, params)  # noqa: S608 - fixed fragments
    total = cur.fetchone()["n"]
    cur.execute(_SELECT + where + " ORDER BY f.id LIMIT %s OFFSET %s", [*params, limit, offset])
    return cur.fetchall(), total


def get_fleet(cur, fleet_id: str) -> dict | None:
    cur.execute(_SELECT + " WHERE f.id = %s", (fleet_id,))
    return cur.fetchone()


def create_fleet(cur, fleet_id: str, name: str) -> bool:
    cur.execute("INSERT INTO fleets (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING", (fleet_id, name))
    return cur.rowcount == 1


def update_fleet(cur, fleet_id: str, changes: dict) -> bool:
    """Set the name and/or the dispatch battery threshold (the keys present in ``changes``)."""
    cur.execute("UPDATE fleets SET name = COALESCE(%(name)s, name), "
                "dispatch_min_battery_pct = COALESCE(%(battery)s, dispatch_min_battery_pct) WHERE id = %(id)s",
                {"name": changes.get("name"), "battery": changes.get("dispatch_min_battery_pct"), "id": fleet_id})
    return cur.rowcount == 1
