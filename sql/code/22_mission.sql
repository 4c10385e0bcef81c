-- 22_mission.sql — fleet/v1/{vid}/mission: the vehicle's mission events (accepted, rejected, progress, paused,
-- resumed, completed, failed, cancelled; docs/PROTOCOL.md, Mission events). Each is checked here and then applied by
-- mission_apply_event (30_mission_transitions.sql), the one function that moves a mission; an event the mission's
-- state does not allow is dead-lettered as invalid_transition.
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

CREATE OR REPLACE FUNCTION ingest.parse_mission_event(p_env jsonb, p_clientid text, p_received_at timestamptz)
RETURNS ingest.mission_report
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    p ingest.mission_report;
    e record;
    d jsonb;
    j jsonb;
    pr jsonb;
    n numeric;
BEGIN
    e := ingest.check_envelope(p_env, p_clientid, p_received_at);
    IF e.reason IS NOT NULL THEN
        p.reason := e.reason; p.detail := e.detail; RETURN p;
    END IF;
    p.msg_id := e.msg_id; p.seq := e.seq; p.ts := e.ts;
    d := e.data;
    BEGIN
        j := d -> 'mission_id';
        IF j IS NULL THEN p.reason := 'missing_field'; p.detail := 'data.mission_id'; RETURN p; END IF;
        IF jsonb_typeof(j) <> 'string' THEN p.reason := 'wrong_type'; p.detail := 'data.mission_id'; RETURN p; END IF;
        IF (j #>> '{}') !~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' THEN
            p.reason := 'invalid_value'; p.detail := 'data.mission_id is not a uuid'; RETURN p;
        END IF;
        p.mission_id := (j #>> '{}')::uuid;

        j := d -> 'event';
        IF j IS NULL THEN p.reason := 'missing_field'; p.detail := 'data.event'; RETURN p; END IF;
        IF jsonb_typeof(j) <> 'string' THEN p.reason := 'wrong_type'; p.detail := 'data.event'; RETURN p; END IF;
        p.event := j #>> '{}';
        IF p.event NOT IN ('accepted', 'rejected', 'progress', 'paused', 'resumed', 'completed', 'failed',
                           'cancelled') THEN
            p.reason := 'invalid_value'; p.detail := 'data.event ' || left(p.event, 40); RETURN p;
        END IF;

        p.event_detail := jsonb_build_object('seq', p.seq);
        j := NULLIF(d -> 'reason', 'null');
        IF j IS NOT NULL THEN
            IF jsonb_typeof(j) <> 'string' THEN p.reason := 'wrong_type'; p.detail := 'data.reason'; RETURN p; END IF;
            p.event_detail := p.event_detail || jsonb_build_object('reason', left(j #>> '{}', 500));
        END IF;
        pr := NULLIF(d -> 'progress', 'null');
        IF pr IS NOT NULL THEN
            IF jsonb_typeof(pr) <> 'object' THEN
                p.reason := 'wrong_type'; p.detail := 'data.progress'; RETURN p;
            END IF;
            IF NOT ingest.is_number_or_null(pr -> 'percent') OR NOT ingest.is_number_or_null(pr -> 'eta_s') THEN
                p.reason := 'wrong_type'; p.detail := 'data.progress.percent/eta_s'; RETURN p;
            END IF;
            IF (NULLIF(pr -> 'percent', 'null'))::float8 NOT BETWEEN 0 AND 100 THEN
                p.reason := 'invalid_value'; p.detail := 'data.progress.percent out of 0..100'; RETURN p;
            END IF;
            n := (NULLIF(pr -> 'eta_s', 'null'))::numeric;
            IF n < 0 OR n > 2147483647 THEN
                p.reason := 'invalid_value'; p.detail := 'data.progress.eta_s'; RETURN p;
            END IF;
            IF pr ? 'step' AND jsonb_typeof(pr -> 'step') NOT IN ('string', 'null') THEN
                p.reason := 'wrong_type'; p.detail := 'data.progress.step'; RETURN p;
            END IF;
            p.event_detail := p.event_detail || jsonb_build_object('progress', jsonb_strip_nulls(jsonb_build_object(
                'percent', (NULLIF(pr -> 'percent', 'null'))::float8,
                'step', left(pr ->> 'step', 200),
                'eta_s', round(n)::integer)));
        END IF;
    EXCEPTION WHEN data_exception THEN
        p.reason := 'invalid_value'; p.detail := left(SQLERRM, 200);
    END;
    RETURN p;
END $$;

-- The inbox: exactly the columns the broker's action inserts (emqx/emqx.conf)
CREATE OR REPLACE VIEW ingest.mission_inbox AS
    SELECT NULL::text AS clientid, NULL::text AS topic, NULL::text AS payload_b64, NULL::bigint AS received_at_ms
     WHERE false;

-- One inbox row. Raises whatever goes wrong beyond the message's content; the trigger below (and
-- ingest.retry_parked) catch it and park the row.
CREATE OR REPLACE FUNCTION ingest.apply_mission(p_clientid text, p_topic text, p_b64 text, p_received_ms bigint)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s ingest.settings;
    received timestamptz := ingest.broker_time(p_received_ms);
    problem text;
    detail text;
    dec record;
    doc jsonb;
    raw bytea;
    p ingest.mission_report;
    owner text;
    result record;
BEGIN
    s := ingest.current_settings();
    problem := ingest.topic_problem(p_clientid, p_topic, 'mission');
    IF problem IS NULL THEN
        dec := ingest.decode_payload(p_b64, s.max_payload_bytes);
        doc := dec.doc;
        raw := dec.raw;
        problem := dec.reason;
        detail := dec.detail;
    ELSE
        raw := ingest.decode_or_null(p_b64);
    END IF;
    IF problem IS NULL THEN
        p := ingest.parse_mission_event(doc, p_clientid, received);
        problem := COALESCE(p.reason, ingest.vehicle_problem(p_clientid));
        detail := p.detail;
    END IF;
    IF problem IS NULL THEN
        SELECT m.vehicle_id INTO owner FROM public.missions m WHERE m.id = p.mission_id;
        IF NOT FOUND THEN
            problem := 'unknown_mission';
        ELSIF owner <> p_clientid THEN
            problem := 'mission_not_assigned';
        END IF;
        detail := p.mission_id::text;
    END IF;
    IF problem IS NULL THEN
        SELECT * INTO result
          FROM public.mission_apply_event(p.mission_id, p.event, 'vehicle', p_clientid, p.ts, p.msg_id,
                                          p.event_detail);
        IF NOT result.applied AND result.error IS DISTINCT FROM 'duplicate' THEN
            -- mission_apply_event's own codes, in this file's vocabulary (checked above; kept for races)
            problem := CASE result.error WHEN 'not_found' THEN 'unknown_mission'
                                         WHEN 'not_assigned' THEN 'mission_not_assigned'
                                         ELSE 'invalid_transition' END;
            detail := format('mission %s is %s; event %s', p.mission_id, result.from_state, p.event);
        END IF;
    END IF;
    IF problem IS NOT NULL THEN
        PERFORM ingest.reject(p_clientid, p_topic, received, problem, detail, raw, s.rejected_payload_cap);
        RETURN;
    END IF;
    UPDATE public.vehicle_state st SET last_seen_at = GREATEST(st.last_seen_at, received)
     WHERE st.vehicle_id = p_clientid;
    RETURN;
END $$;

-- The broker's INSERT: never raises, never waits (the contract in 10_ingest_common.sql).
-- A vehicle with a parked message parks its later ones behind it, so they are applied in order.
CREATE OR REPLACE FUNCTION ingest.mission_inbox_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '100ms' AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM ingest.parked p WHERE p.clientid = NEW.clientid) THEN
        PERFORM ingest.park('mission', NEW.clientid, to_jsonb(NEW), 'behind');
        RETURN NEW;
    END IF;
    BEGIN
        PERFORM ingest.apply_mission(NEW.clientid, NEW.topic, NEW.payload_b64, NEW.received_at_ms);
    EXCEPTION WHEN OTHERS OR query_canceled OR assert_failure THEN
        PERFORM ingest.park('mission', NEW.clientid, to_jsonb(NEW), SQLSTATE || ': ' || SQLERRM);
    END;
    RETURN NEW;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- The inbox's trigger
-- ---------------------------------------------------------------------------------------------------
CREATE OR REPLACE TRIGGER mission_inbox_insert INSTEAD OF INSERT ON ingest.mission_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.mission_inbox_insert();

-- fleet_ingest may INSERT into the inbox and do nothing else; no function in schema ingest is callable by PUBLIC.
GRANT INSERT ON ingest.mission_inbox TO fleet_ingest;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ingest FROM PUBLIC;
