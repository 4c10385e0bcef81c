-- 30_mission_transitions.sql — the one function that moves a mission (docs/PROTOCOL.md, Missions).
--
-- Shared by the api (dispatch, requeue, cancel, pause, resume, reprioritize, abort, expire, timeout; actor
-- system/operator) and the vehicle ingest path (accepted, rejected, progress, paused, resumed, completed, failed,
-- cancelled; actor vehicle; 22_mission.sql). Allowed moves are the rows of mission_transitions (sql/001_core.sql,
-- sql/041_mission_control.sql) and nothing else. Errors (applied = false):
--   not_found           no such mission
--   not_assigned        a vehicle event for a mission assigned to another vehicle
--   duplicate           (mission, msg_id) was already applied: a redelivery, a no-op
--   invalid_transition  no row in mission_transitions for (state, event, actor); the mission is unchanged
-- Every applied event appends to mission_events (with the mission's attempt); every change of state sends
-- NOTIFY fleet_mission_state {"mission_id","vehicle_id","to_state"} (delivered on commit).
--
-- Besides the state it keeps two things in step, so that no caller can forget them:
-- * the operator command the vehicle has not confirmed yet (pending_command): set by an operator's cancel, pause
--   or resume, cleared by the vehicle's confirmation (`paused`, `resumed`, or the mission ending); the worker
--   re-sends it until then (api/dispatcher.py);
-- * the retry policy: an outcome listed in the mission's retry_on, reached before max_attempts, is followed in
--   the same transaction by the system event `retry` back to `queued` (next attempt, after a back-off). An
--   outcome the operator asked for (a cancel was pending) is never retried.
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

-- One move along the table, without the retry policy: the building block of mission_apply_event.
CREATE OR REPLACE FUNCTION public.mission_move(p_mission uuid, p_event text, p_actor_type text, p_actor_id text,
                                               p_device_time timestamptz, p_msg_id text, p_detail jsonb)
RETURNS TABLE (applied boolean, from_state text, to_state text, error text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m record;
    target text;
    is_terminal boolean;
    d jsonb := COALESCE(p_detail, '{}'::jsonb);
    confirmed boolean;
BEGIN
    SELECT mi.id, mi.vehicle_id, mi.state, mi.attempt, mi.pending_command INTO m
      FROM public.missions mi WHERE mi.id = p_mission FOR UPDATE;
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
    confirmed := is_terminal
        OR (m.pending_command = 'pause' AND p_actor_type = 'vehicle' AND p_event = 'paused')
        OR (m.pending_command = 'resume' AND p_actor_type = 'vehicle' AND p_event = 'resumed');

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
                              THEN COALESCE(d ->> 'reason', p_event) ELSE mi.failure_reason END,
        pending_command = CASE WHEN p_actor_type = 'operator' AND p_event IN ('cancel', 'pause', 'resume')
                                    AND NOT is_terminal THEN p_event
                               WHEN confirmed THEN NULL ELSE mi.pending_command END,
        pending_command_since = CASE WHEN p_actor_type = 'operator' AND p_event IN ('cancel', 'pause', 'resume')
                                          AND NOT is_terminal THEN now()
                                     WHEN confirmed THEN NULL ELSE mi.pending_command_since END,
        command_sends = CASE WHEN p_actor_type = 'operator' AND p_event IN ('cancel', 'pause', 'resume')
                             THEN 0 ELSE mi.command_sends END,
        command_next_at = CASE WHEN p_actor_type = 'operator' AND p_event IN ('cancel', 'pause', 'resume')
                                    AND NOT is_terminal THEN now()
                               WHEN confirmed THEN NULL ELSE mi.command_next_at END
     WHERE mi.id = p_mission;

    INSERT INTO public.mission_events (mission_id, event, from_state, to_state, actor_type, actor_id, device_time,
                                       msg_id, detail, attempt)
    VALUES (p_mission, p_event, m.state, target, p_actor_type, p_actor_id, p_device_time, p_msg_id, d, m.attempt);

    IF target <> m.state THEN
        PERFORM pg_notify('fleet_mission_state', json_build_object(
            'mission_id', p_mission, 'vehicle_id', m.vehicle_id, 'to_state', target)::text);
    END IF;
    RETURN QUERY SELECT true, m.state::text, target, NULL::text;
END $$;

CREATE OR REPLACE FUNCTION public.mission_apply_event(p_mission uuid, p_event text, p_actor_type text, p_actor_id text,
                                                      p_device_time timestamptz, p_msg_id text, p_detail jsonb)
RETURNS TABLE (applied boolean, from_state text, to_state text, error text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    m record;
    pending text;
BEGIN
    SELECT mi.pending_command INTO pending FROM public.missions mi WHERE mi.id = p_mission;
    SELECT * INTO r FROM public.mission_move(p_mission, p_event, p_actor_type, p_actor_id, p_device_time, p_msg_id,
                                             p_detail);
    IF r.applied AND r.to_state <> r.from_state AND pending IS DISTINCT FROM 'cancel' THEN
        SELECT mi.attempt, mi.max_attempts, mi.retry_on, mi.failure_reason INTO m
          FROM public.missions mi WHERE mi.id = p_mission;
        IF r.to_state = ANY (m.retry_on) AND m.attempt < m.max_attempts THEN
            PERFORM public.mission_move(p_mission, 'retry', 'system', 'retry_policy', NULL, NULL, jsonb_build_object(
                'after', r.to_state, 'reason', m.failure_reason, 'next_attempt', m.attempt + 1,
                'max_attempts', m.max_attempts));
            -- the next attempt starts afresh, after a back-off that grows with each attempt
            UPDATE public.missions mi SET
                attempt = mi.attempt + 1,
                next_attempt_at = now() + make_interval(secs => LEAST(60, power(2, mi.attempt))),
                dispatched_at = NULL, accepted_at = NULL, started_at = NULL, finished_at = NULL,
                failure_reason = NULL, progress_percent = NULL, progress_step = NULL, progress_eta_s = NULL
             WHERE mi.id = p_mission;
            RETURN QUERY SELECT true, r.from_state, 'queued'::text, NULL::text;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT r.applied, r.from_state, r.to_state, r.error;
END $$;

REVOKE EXECUTE ON FUNCTION public.mission_move(uuid, text, text, text, timestamptz, text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.mission_apply_event(uuid, text, text, text, timestamptz, text, jsonb) FROM PUBLIC;
