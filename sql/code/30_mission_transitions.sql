-- 30_mission_transitions.sql — the one function that moves a mission (docs/PROTOCOL.md, Missions).
--
-- Shared by the api (dispatch, requeue, cancel, expire, timeout; actor system/operator) and the vehicle ingest
-- path (accepted, rejected, progress, completed, failed, cancelled; actor vehicle; 22_mission.sql). Allowed moves
-- are the rows of mission_transitions (sql/001_core.sql) and nothing else. Errors (applied = false):
--   not_found           no such mission
--   not_assigned        a vehicle event for a mission assigned to another vehicle
--   duplicate           (mission, msg_id) was already applied: a redelivery, a no-op
--   invalid_transition  no row in mission_transitions for (state, event, actor); the mission is unchanged
-- Every applied event appends to mission_events; every change of state sends NOTIFY fleet_mission_state
-- {"mission_id","vehicle_id","to_state"} (delivered on commit).
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

CREATE OR REPLACE FUNCTION public.mission_apply_event(p_mission uuid, p_event text, p_actor_type text, p_actor_id text,
                                                      p_device_time timestamptz, p_msg_id text, p_detail jsonb)
RETURNS TABLE (applied boolean, from_state text, to_state text, error text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m record;
    target text;
    is_terminal boolean;
    d jsonb := COALESCE(p_detail, '{}'::jsonb);
BEGIN
    SELECT mi.id, mi.vehicle_id, mi.state INTO m FROM public.missions mi WHERE mi.id = p_mission FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, NULL::text, NULL::text, 'not_found'::text;
        RETURN;
    END IF;
    IF p_actor_type = 'vehicle' AND p_actor_id IS DISTINCT FROM m.vehicle_id THEN
        RETURN QUERY SELECT false, m.state, NULL::text, 'not_assigned'::text;
        RETURN;
    END IF;
    IF p_msg_id IS NOT NULL AND EXISTS (SELECT 1 FROM public.mission_events e
                                         WHERE e.mission_id = p_mission AND e.msg_id = p_msg_id) THEN
        RETURN QUERY SELECT false, m.state, m.state, 'duplicate'::text;
        RETURN;
    END IF;
    SELECT t.to_state, s.terminal INTO target, is_terminal
      FROM public.mission_transitions t JOIN public.mission_states s ON s.state = t.to_state
     WHERE t.from_state = m.state AND t.event = p_event AND t.actor = p_actor_type;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, m.state, NULL::text, 'invalid_transition'::text;
        RETURN;
    END IF;

    UPDATE public.missions mi SET
        state = target,
        updated_at = now(),
        last_event_at = now(),
        dispatched_at = CASE WHEN p_event = 'dispatch' THEN now() ELSE mi.dispatched_at END,
        accepted_at = CASE WHEN target = 'accepted' THEN COALESCE(mi.accepted_at, now()) ELSE mi.accepted_at END,
        started_at = CASE WHEN target = 'in_progress' THEN COALESCE(mi.started_at, now()) ELSE mi.started_at END,
        finished_at = CASE WHEN is_terminal THEN now() ELSE mi.finished_at END,
        -- progress_* is what the vehicle last reported; a completed mission is done (100 %, nothing left),
        -- any other ending keeps the last report (how far it got)
        progress_percent = CASE WHEN target = 'completed' THEN 100
                                ELSE COALESCE((d #>> '{progress,percent}')::real, mi.progress_percent) END,
        progress_step = CASE WHEN target = 'completed' THEN 'completed'
                             ELSE COALESCE(d #>> '{progress,step}', mi.progress_step) END,
        progress_eta_s = CASE WHEN target = 'completed' THEN 0
                              ELSE COALESCE((d #>> '{progress,eta_s}')::integer, mi.progress_eta_s) END,
        failure_reason = CASE WHEN target IN ('failed', 'rejected', 'cancelled', 'timed_out', 'expired')
                              THEN COALESCE(d ->> 'reason', p_event) ELSE mi.failure_reason END
     WHERE mi.id = p_mission;

    INSERT INTO public.mission_events (mission_id, event, from_state, to_state, actor_type, actor_id, device_time,
                                       msg_id, detail)
    VALUES (p_mission, p_event, m.state, target, p_actor_type, p_actor_id, p_device_time, p_msg_id, d);

    IF target <> m.state THEN
        PERFORM pg_notify('fleet_mission_state', json_build_object(
            'mission_id', p_mission, 'vehicle_id', m.vehicle_id, 'to_state', target)::text);
    END IF;
    RETURN QUERY SELECT true, m.state::text, target, NULL::text;
END $$;

REVOKE EXECUTE ON FUNCTION public.mission_apply_event(uuid, text, text, text, timestamptz, text, jsonb) FROM PUBLIC;
