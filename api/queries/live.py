"""SQL of the console's event stream (api/live.py), for asyncpg (``$n`` parameters).

PostgreSQL builds the JSON, so a snapshot of 10,000 vehicles is one text value, not 10,000 Python dicts. A vehicle
travels as a compact array in the order of ``VEHICLE_COLUMNS``; missions, their events and alarms as objects.
``$n::text[]`` fleets: NULL for every fleet (an admin). Times are epoch milliseconds (``*_ms``).
``SNAPSHOT_SQL`` is the whole snapshot built by PostgreSQL alone (the benchmark's baseline).
"""
from __future__ import annotations

VEHICLE_COLUMNS = ("id", "fleet_id", "name", "status", "lat", "lon", "heading_deg", "speed_mps", "battery_pct",
                   "mode", "health", "estop", "online", "last_seen_ms", "telemetry_ms", "updated_ms")

_MS = "(extract(epoch FROM {})*1000)::bigint"
_VEHICLE_ROW = f"""json_build_array(v.id, v.fleet_id, v.name, v.status, s.lat, s.lon, s.heading_deg, s.speed_mps,
    s.battery_pct, s.mode, s.health, s.estop, s.online, {_MS.format('s.last_seen_at')},
    {_MS.format('s.telemetry_ts')}, {_MS.format('s.updated_at')})"""
_VEHICLES_FROM = "FROM vehicles v JOIN vehicle_state s ON s.vehicle_id = v.id"
_MISSION = """json_build_object('id', m.id, 'vehicle_id', m.vehicle_id, 'fleet_id', m.fleet_id, 'name', m.name,
    'state', m.state, 'priority', m.priority, 'waypoints', m.waypoints, 'progress',
    json_build_object('percent', m.progress_percent, 'step', m.progress_step, 'eta_s', m.progress_eta_s),
    'timeout_s', m.timeout_s, 'ttl_s', m.ttl_s, 'expires_at', m.expires_at, 'created_at', m.created_at,
    'created_by', m.created_by, 'updated_at', m.updated_at, 'last_event_at', m.last_event_at,
    'finished_at', m.finished_at, 'failure_reason', m.failure_reason)"""
_MISSION_EVENT = """json_build_object('event', json_build_object('id', e.id, 'mission_id', e.mission_id,
    'event', e.event, 'from_state', e.from_state, 'to_state', e.to_state, 'actor_type', e.actor_type,
    'actor_id', e.actor_id, 'at', e.server_time), 'mission', """ + _MISSION + ")"
_FLEETS = "($%d::text[] IS NULL OR {}.fleet_id = ANY($%d::text[]))"

NOW_MS = f"SELECT {_MS.format('statement_timestamp()')}"

# -- rows named by a notification (fleet_id, json text) --------------------------------------------------------
VEHICLES_BY_ID = (f"SELECT v.id, v.fleet_id, v.status, {_VEHICLE_ROW}::text AS row {_VEHICLES_FROM} "
                  "WHERE v.id = ANY($1::text[])")
# every vehicle, for the hub's copy (api/live.py)
VEHICLES_ALL = f"SELECT v.id, v.fleet_id, v.status, {_VEHICLE_ROW}::text AS row {_VEHICLES_FROM}"
MISSION_EVENTS_BY_ID = f"""SELECT m.fleet_id, {_MISSION_EVENT}::text AS row
    FROM mission_events e JOIN missions m ON m.id = e.mission_id WHERE e.id = ANY($1::bigint[]) ORDER BY e.id"""
ALARMS_BY_ID = "SELECT a.fleet_id, alarm_json(a)::text AS row FROM alarms a WHERE a.id = ANY($1::bigint[])"

# -- what changed since a time (a browser resuming with Last-Event-ID): $1 timestamptz, $2 fleets ---------------
VEHICLES_SINCE = (f"SELECT v.fleet_id, {_VEHICLE_ROW}::text AS row {_VEHICLES_FROM} "
                  f"WHERE s.updated_at > $1 AND {_FLEETS.format('v') % (2, 2)}")
MISSION_EVENTS_SINCE = f"""SELECT m.fleet_id, {_MISSION_EVENT}::text AS row
    FROM mission_events e JOIN missions m ON m.id = e.mission_id
    WHERE e.server_time > $1 AND {_FLEETS.format('m') % (2, 2)} ORDER BY e.id LIMIT $3"""
ALARMS_SINCE = (f"SELECT a.fleet_id, alarm_json(a)::text AS row FROM alarms a "
                f"WHERE a.updated_at > $1 AND {_FLEETS.format('a') % (2, 2)} ORDER BY a.id")

# -- the first event of a stream: the missions and alarms the console shows ($1 fleets, $2 how many of each); the
# vehicles come from the hub's copy of every vehicle's row (VEHICLES_ALL, then every change)
def _lists(limit: str) -> str:
    return f"""json_build_object(
    'missions', (SELECT COALESCE(json_agg({_MISSION} ORDER BY m.created_at DESC), '[]')
                   FROM (SELECT * FROM missions m
                          WHERE (m.finished_at IS NULL OR m.finished_at > now() - interval '1 hour')
                            AND {_FLEETS.format('m') % (1, 1)}
                          ORDER BY m.created_at DESC LIMIT {limit}) m),
    'alarms', (SELECT COALESCE(json_agg(alarm_json(a) ORDER BY a.last_raised_at DESC), '[]')
                 FROM (SELECT * FROM alarms a
                        WHERE (a.state <> 'cleared' OR a.cleared_at > now() - interval '1 hour')
                          AND {_FLEETS.format('a') % (1, 1)}
                        ORDER BY a.last_raised_at DESC LIMIT {limit}) a))"""


SNAPSHOT_LISTS = f"SELECT {_lists('$2')}::text AS lists"
# The whole snapshot built by PostgreSQL alone, as one JSON text: what bench/console.py measures the stream's
# snapshot against ($1 fleets, $2 columns, $3 how many missions and alarms).
SNAPSHOT_SQL = f"""SELECT json_build_object('columns', $2::text[],
    'vehicles', (SELECT COALESCE(json_agg({_VEHICLE_ROW}), '[]') {_VEHICLES_FROM}
                  WHERE v.status <> 'decommissioned' AND {_FLEETS.format('v') % (1, 1)}),
    'lists', {_lists('$3')})::text"""

# -- is the stream's session still good, and which fleets may it see now ($1 session id, $2 user id) ------------
SESSION = """SELECT u.role, u.active AND s.revoked_at IS NULL AND s.expires_at > now() AS valid,
       COALESCE(ARRAY(SELECT fleet_id FROM user_fleets WHERE user_id = u.id), '{}') AS fleets
  FROM auth_sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1::uuid AND u.id = $2"""

