-- 31_dispatch_gating.sql — whether a vehicle may be sent a mission now, and why not (docs/PROTOCOL.md, Dispatch
-- gating). The one definition, used by the dispatcher (it claims nothing for a blocked vehicle), by its sweep
-- (blocked vehicles are not even tried), by the missions api (a queued mission shows its `blocked_reason`) and by
-- the metrics (queued missions by blocked reason).
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

-- The newest active emergency stop that applies to the vehicle (its own, its fleet's or all fleets'), or NULL.
CREATE OR REPLACE FUNCTION public.emergency_stop_applying(p_vehicle text) RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.id FROM public.emergency_stops s JOIN public.vehicles v ON v.id = p_vehicle
     WHERE s.released_at IS NULL
       AND (s.scope = 'all' OR (s.scope = 'fleet' AND s.fleet_id = v.fleet_id)
            OR (s.scope = 'vehicle' AND s.vehicle_id = v.id))
     ORDER BY s.set_at DESC, s.id DESC
     LIMIT 1
$$;

-- Why no mission may go to the vehicle now, or NULL when one may (being online and idle is checked apart):
--   vehicle_pending | vehicle_revoked | vehicle_decommissioned   it cannot connect as itself
--   emergency_stop    an operator's stop applies (until released)
--   vehicle_estop     the vehicle reports itself e-stopped (its own button, or a stop not yet released on it)
--   mode_manual | mode_service   a person has the vehicle
--   health_fatal      it reports a FATAL error
--   battery_low       its battery is below its fleet's dispatch_min_battery_pct (an unknown battery does not block)
CREATE OR REPLACE FUNCTION public.dispatch_blocker(p_vehicle text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN v.status <> 'active' THEN 'vehicle_' || v.status
        WHEN public.emergency_stop_applying(v.id) IS NOT NULL THEN 'emergency_stop'
        WHEN s.estop OR s.mode = 'ESTOP' THEN 'vehicle_estop'
        WHEN s.mode IN ('MANUAL', 'SERVICE') THEN 'mode_' || lower(s.mode)
        WHEN s.health = 'FATAL' THEN 'health_fatal'
        WHEN s.battery_pct < f.dispatch_min_battery_pct THEN 'battery_low'
    END
      FROM public.vehicles v JOIN public.fleets f ON f.id = v.fleet_id
      LEFT JOIN public.vehicle_state s ON s.vehicle_id = v.id
     WHERE v.id = p_vehicle
$$;

REVOKE EXECUTE ON FUNCTION public.emergency_stop_applying(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.dispatch_blocker(text) FROM PUBLIC;
