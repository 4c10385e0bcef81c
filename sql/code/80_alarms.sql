-- 80_alarms.sql — the alarm rules and the alarm lifecycle (tables: sql/050_alarms.sql; docs/OPERATIONS.md, Alarms).
--
-- alarm_evaluate() is called by the worker every ALARM_EVALUATE_INTERVAL_S (api/notifier.py): it works out which
-- conditions hold now, raises the alarms that are new or back, and notes the end of those whose condition is over.
-- alarm_acknowledge() is the operator's side (POST /api/v1/alarms/{id}/acknowledge). Every change of an alarm goes
-- through alarm_log(), which appends to alarm_events, queues one delivery per matching webhook and sends
-- NOTIFY fleet_alarm {"alarm_id","fleet_id"} (delivered on commit) for the console's event stream (api/live.py).
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

CREATE OR REPLACE FUNCTION public.alarm_severity_rank(p_severity text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT CASE p_severity WHEN 'info' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END $$;

-- The alarm as the api, the console and the webhooks show it.
CREATE OR REPLACE FUNCTION public.alarm_json(a public.alarms) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', a.id, 'kind', a.kind, 'subject', a.subject, 'fleet_id', a.fleet_id, 'vehicle_id', a.vehicle_id,
        'mission_id', a.mission_id, 'severity', a.severity, 'state', a.state, 'in_condition', a.in_condition,
        'count', a.count, 'message', a.message, 'details', a.details, 'first_raised_at', a.first_raised_at,
        'last_raised_at', a.last_raised_at, 'condition_ended_at', a.condition_ended_at,
        'acknowledged_at', a.acknowledged_at, 'acknowledged_by', a.acknowledged_by, 'cleared_at', a.cleared_at,
        'cleared_by', a.cleared_by, 'updated_at', a.updated_at)
$$;

-- Record one change of an alarm (already written to its row): history, webhook deliveries, notification.
CREATE OR REPLACE FUNCTION public.alarm_log(p_alarm bigint, p_event text, p_actor text, p_detail jsonb)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a public.alarms;
    event_id bigint;
    event_at timestamptz;
BEGIN
    SELECT * INTO a FROM public.alarms WHERE id = p_alarm;
    INSERT INTO public.alarm_events (alarm_id, event, actor, detail)
    VALUES (p_alarm, p_event, p_actor, COALESCE(p_detail, '{}'::jsonb))
    RETURNING id, at INTO event_id, event_at;
    INSERT INTO public.webhook_deliveries (webhook_id, alarm_event_id, payload)
    SELECT w.id, event_id, jsonb_build_object('event_id', event_id, 'event', p_event, 'at', event_at,
                                              'actor', p_actor, 'alarm', public.alarm_json(a))
      FROM public.alarm_webhooks w
     WHERE w.active AND (w.fleet_id IS NULL OR w.fleet_id = a.fleet_id)
       AND public.alarm_severity_rank(a.severity) >= public.alarm_severity_rank(w.min_severity);
    IF FOUND THEN
        PERFORM pg_notify('fleet_webhook', '');
    END IF;
    PERFORM pg_notify('fleet_alarm', json_build_object('alarm_id', p_alarm, 'fleet_id', a.fleet_id)::text);
END $$;

-- Raise an alarm, or count up the open one of the same kind and subject when its condition had ended (or it is
-- an event). An open alarm whose condition still holds only follows a change of severity ('escalated').
CREATE OR REPLACE FUNCTION public.alarm_raise(p_kind text, p_subject text, p_fleet text, p_vehicle text,
                                              p_mission uuid, p_severity text, p_message text, p_details jsonb)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    is_condition boolean;
    open_alarm public.alarms;
    alarm_id bigint;
BEGIN
    SELECT k.condition INTO is_condition FROM public.alarm_kinds k WHERE k.kind = p_kind;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown alarm kind %', p_kind USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO open_alarm FROM public.alarms
     WHERE kind = p_kind AND subject = p_subject AND state <> 'cleared' FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO public.alarms (kind, subject, fleet_id, vehicle_id, mission_id, severity, in_condition, message,
                                   details)
        VALUES (p_kind, p_subject, p_fleet, p_vehicle, p_mission, p_severity, is_condition, p_message,
                COALESCE(p_details, '{}'::jsonb))
        RETURNING id INTO alarm_id;
        PERFORM public.alarm_log(alarm_id, 'raised', 'system', '{}'::jsonb);
        RETURN alarm_id;
    END IF;
    IF is_condition AND open_alarm.in_condition THEN
        IF open_alarm.severity IS DISTINCT FROM p_severity THEN
            UPDATE public.alarms SET severity = p_severity, message = p_message,
                                     details = COALESCE(p_details, '{}'::jsonb), updated_at = now()
             WHERE id = open_alarm.id;
            PERFORM public.alarm_log(open_alarm.id, 'escalated', 'system',
                                     jsonb_build_object('from', open_alarm.severity, 'to', p_severity));
        END IF;
        RETURN open_alarm.id;
    END IF;
    -- back again before anyone cleared it: one row, counted; it needs a new acknowledgement
    UPDATE public.alarms SET count = count + 1, last_raised_at = now(), in_condition = is_condition,
                             condition_ended_at = NULL, state = 'active', severity = p_severity, message = p_message,
                             details = COALESCE(p_details, '{}'::jsonb), updated_at = now()
     WHERE id = open_alarm.id;
    PERFORM public.alarm_log(open_alarm.id, 'repeated', 'system', jsonb_build_object('count', open_alarm.count + 1));
    RETURN open_alarm.id;
END $$;

-- The condition of an open alarm is over: cleared now if it was acknowledged, else it waits for that.
CREATE OR REPLACE FUNCTION public.alarm_condition_ended(p_alarm bigint) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was_state text;
BEGIN
    UPDATE public.alarms a SET in_condition = false, condition_ended_at = now(), updated_at = now(),
                               state = CASE WHEN a.state = 'acknowledged' THEN 'cleared' ELSE a.state END,
                               cleared_at = CASE WHEN a.state = 'acknowledged' THEN now() END,
                               cleared_by = CASE WHEN a.state = 'acknowledged' THEN 'system' END
     WHERE a.id = p_alarm AND a.in_condition AND a.state <> 'cleared'
    RETURNING WITH (OLD AS o) o.state INTO was_state;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM public.alarm_log(p_alarm, 'condition_ended', 'system', '{}'::jsonb);
    IF was_state = 'acknowledged' THEN
        PERFORM public.alarm_log(p_alarm, 'cleared', 'system', '{}'::jsonb);
    END IF;
END $$;

-- An operator acknowledges an alarm: it is cleared at once when its condition is already over.
-- outcome: 'acknowledged', 'cleared', 'already_acknowledged', 'already_cleared' or 'not_found'.
CREATE OR REPLACE FUNCTION public.alarm_acknowledge(p_alarm bigint, p_user text, p_comment text)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a public.alarms;
BEGIN
    SELECT * INTO a FROM public.alarms WHERE id = p_alarm FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'not_found';
    ELSIF a.state = 'cleared' THEN
        RETURN 'already_cleared';
    ELSIF a.state = 'acknowledged' THEN
        RETURN 'already_acknowledged';
    END IF;
    UPDATE public.alarms SET state = CASE WHEN a.in_condition THEN 'acknowledged' ELSE 'cleared' END,
                             acknowledged_at = now(), acknowledged_by = p_user,
                             cleared_at = CASE WHEN a.in_condition THEN NULL ELSE now() END,
                             cleared_by = CASE WHEN a.in_condition THEN NULL ELSE p_user END,
                             updated_at = now()
     WHERE id = p_alarm;
    PERFORM public.alarm_log(p_alarm, 'acknowledged', p_user,
                             CASE WHEN p_comment IS NULL THEN '{}'::jsonb
                                  ELSE jsonb_build_object('comment', p_comment) END);
    IF NOT a.in_condition THEN
        PERFORM public.alarm_log(p_alarm, 'cleared', p_user, '{}'::jsonb);
        RETURN 'cleared';
    END IF;
    RETURN 'acknowledged';
END $$;

-- The conditions that hold now, one row per (kind, subject): the rules, each in one place.
CREATE OR REPLACE FUNCTION public.alarm_conditions()
RETURNS TABLE (kind text, subject text, fleet_id text, vehicle_id text, mission_id uuid, severity text,
               message text, details jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH cfg AS (SELECT * FROM public.alarm_settings),
    fleet_vehicles AS (
        SELECT v.id, v.fleet_id, s.* FROM public.vehicles v JOIN public.vehicle_state s ON s.vehicle_id = v.id
         WHERE v.status = 'active')
    -- offline longer than offline_after (a vehicle that never connected is not offline, it is new)
    SELECT 'vehicle_offline', f.id, f.fleet_id, f.id, NULL::uuid, 'warning',
           'offline since ' || to_char(COALESCE(f.disconnected_at, f.last_seen_at) AT TIME ZONE 'UTC',
                                       'YYYY-MM-DD HH24:MI:SS') || ' UTC',
           jsonb_build_object('since', COALESCE(f.disconnected_at, f.last_seen_at), 'reason', f.disconnect_reason)
      FROM fleet_vehicles f, cfg
     WHERE NOT f.online AND f.last_seen_at IS NOT NULL
       AND COALESCE(f.disconnected_at, f.last_seen_at) < now() - cfg.offline_after
    UNION ALL
    -- low battery, with hysteresis: an open alarm holds until the battery is above battery_clear_pct
    SELECT 'battery_low', f.id, f.fleet_id, f.id, NULL, 'warning',
           'battery at ' || round(f.battery_pct::numeric, 1) || ' %', jsonb_build_object('battery_pct', f.battery_pct)
      FROM fleet_vehicles f, cfg
     WHERE f.battery_pct < cfg.battery_low_pct
        OR (f.battery_pct < cfg.battery_clear_pct
            AND EXISTS (SELECT 1 FROM public.alarms a WHERE a.kind = 'battery_low' AND a.subject = f.id
                                                      AND a.state <> 'cleared' AND a.in_condition))
    UNION ALL
    SELECT 'health', f.id, f.fleet_id, f.id, NULL, CASE f.health WHEN 'FATAL' THEN 'critical' ELSE 'warning' END,
           'health ' || f.health || COALESCE(': ' || (SELECT string_agg(COALESCE(e ->> 'code', e #>> '{}'), ', ')
                                                        FROM jsonb_array_elements(
                                                             CASE WHEN jsonb_typeof(f.errors) = 'array'
                                                                  THEN f.errors ELSE '[]' END) e), ''),
           jsonb_build_object('health', f.health, 'errors', f.errors)
      FROM fleet_vehicles f WHERE f.health IN ('WARNING', 'FATAL')
    UNION ALL
    SELECT 'estop_active', f.id, f.fleet_id, f.id, NULL, 'critical', 'emergency stop active',
           jsonb_build_object('mode', f.mode)
      FROM fleet_vehicles f WHERE f.estop OR f.mode = 'ESTOP'
    UNION ALL
    -- an active mission without any event for mission_stalled_after
    SELECT 'mission_stalled', m.id::text, m.fleet_id, m.vehicle_id, m.id, 'warning',
           'mission "' || m.name || '" has reported nothing since '
               || to_char(COALESCE(m.last_event_at, m.updated_at) AT TIME ZONE 'UTC', 'HH24:MI:SS') || ' UTC',
           jsonb_build_object('state', m.state, 'last_event_at', COALESCE(m.last_event_at, m.updated_at))
      FROM public.missions m, cfg
     WHERE m.state IN ('accepted', 'in_progress')
       AND COALESCE(m.last_event_at, m.updated_at) < now() - cfg.mission_stalled_after
    UNION ALL
    SELECT 'dead_letter_spike', v.id, v.fleet_id, v.id, NULL, 'warning',
           r.n || ' dead-lettered messages within ' || cfg.dead_letter_window, jsonb_build_object('count', r.n)
      FROM cfg, LATERAL (SELECT clientid, count(*) AS n FROM public.rejected_messages
                          WHERE received_at > now() - cfg.dead_letter_window GROUP BY clientid) r
      JOIN public.vehicles v ON v.id = r.clientid
     WHERE r.n >= cfg.dead_letter_threshold
$$;

-- One evaluation pass (the worker's): raise what holds and is not open, end what is open and no longer holds,
-- and raise one event alarm per mission that ended failed or timed out within the last hour.
CREATE OR REPLACE FUNCTION public.alarm_evaluate(OUT raised integer, OUT ended integer)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    now_holding jsonb;
    c record;
BEGIN
    raised := 0;
    ended := 0;
    SELECT COALESCE(jsonb_agg(to_jsonb(h)), '[]'::jsonb) INTO now_holding FROM public.alarm_conditions() h;
    FOR c IN
        SELECT h.* FROM jsonb_to_recordset(now_holding)
                        AS h(kind text, subject text, fleet_id text, vehicle_id text, mission_id uuid, severity text,
                             message text, details jsonb)
         WHERE NOT EXISTS (SELECT 1 FROM public.alarms a
                            WHERE a.kind = h.kind AND a.subject = h.subject AND a.state <> 'cleared'
                              AND a.in_condition AND a.severity = h.severity)
         ORDER BY h.kind, h.subject
    LOOP
        PERFORM public.alarm_raise(c.kind, c.subject, c.fleet_id, c.vehicle_id, c.mission_id, c.severity, c.message,
                                   c.details);
        raised := raised + 1;
    END LOOP;
    FOR c IN
        SELECT a.id FROM public.alarms a JOIN public.alarm_kinds k ON k.kind = a.kind AND k.condition
         WHERE a.state <> 'cleared' AND a.in_condition
           AND NOT EXISTS (SELECT 1 FROM jsonb_to_recordset(now_holding) AS h(kind text, subject text)
                            WHERE h.kind = a.kind AND h.subject = a.subject)
         ORDER BY a.id
    LOOP
        PERFORM public.alarm_condition_ended(c.id);
        ended := ended + 1;
    END LOOP;
    FOR c IN
        SELECT m.id, m.fleet_id, m.vehicle_id, m.name, m.state, m.failure_reason FROM public.missions m
         WHERE m.state IN ('failed', 'timed_out') AND m.finished_at > now() - interval '1 hour'
           AND NOT EXISTS (SELECT 1 FROM public.alarms a WHERE a.subject = m.id::text
                                                           AND a.kind = 'mission_' || m.state)
         ORDER BY m.finished_at
    LOOP
        PERFORM public.alarm_raise('mission_' || c.state, c.id::text, c.fleet_id, c.vehicle_id, c.id, 'warning',
                                   'mission "' || c.name || '" ' || replace(c.state, '_', ' ')
                                       || COALESCE(': ' || c.failure_reason, ''),
                                   jsonb_build_object('reason', c.failure_reason));
        raised := raised + 1;
    END LOOP;
END $$;

REVOKE EXECUTE ON FUNCTION public.alarm_evaluate() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.alarm_acknowledge(bigint, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.alarm_raise(text, text, text, text, uuid, text, text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.alarm_condition_ended(bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.alarm_log(bigint, text, text, jsonb) FROM PUBLIC;
