-- 21_status.sql — fleet/v1/{vid}/status: mode, health, errors, battery and the applied configuration, sent on
-- change and periodically (docs/PROTOCOL.md, Status). Each report is appended to vehicle_status once, moves
-- vehicle_state forward only by (device ts, seq) and records the configuration the vehicle reports; a bad one is
-- dead-lettered.
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

-- Validate one status envelope. health: FATAL if any FATAL error, WARNING if any WARNING error or the
-- emergency stop is engaged, else OK.
CREATE OR REPLACE FUNCTION ingest.parse_status(p_env jsonb, p_clientid text, p_received_at timestamptz)
RETURNS ingest.status_report
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    p ingest.status_report;
    e record;
    d jsonb;
    j jsonb;
    err jsonb;
    n numeric;
BEGIN
    e := ingest.check_envelope(p_env, p_clientid, p_received_at);
    IF e.reason IS NOT NULL THEN
        p.reason := e.reason; p.detail := e.detail; RETURN p;
    END IF;
    p.msg_id := e.msg_id; p.seq := e.seq; p.ts := e.ts;
    d := e.data;
    BEGIN
        j := d -> 'mode';
        IF j IS NULL THEN p.reason := 'missing_field'; p.detail := 'data.mode'; RETURN p; END IF;
        IF jsonb_typeof(j) <> 'string' THEN p.reason := 'wrong_type'; p.detail := 'data.mode'; RETURN p; END IF;
        p.mode := j #>> '{}';
        IF p.mode NOT IN ('AUTO', 'MANUAL', 'SERVICE', 'ESTOP') THEN
            p.reason := 'invalid_value'; p.detail := 'data.mode ' || left(p.mode, 40); RETURN p;
        END IF;

        IF NOT ingest.is_number_or_null(d -> 'battery_pct') THEN
            p.reason := 'wrong_type'; p.detail := 'data.battery_pct'; RETURN p;
        END IF;
        p.battery_pct := (NULLIF(d -> 'battery_pct', 'null'))::float8::real;
        IF p.battery_pct NOT BETWEEN 0 AND 100 THEN
            p.reason := 'invalid_value'; p.detail := 'data.battery_pct out of 0..100'; RETURN p;
        END IF;

        IF jsonb_typeof(d -> 'charging') NOT IN ('boolean', 'null') THEN
            p.reason := 'wrong_type'; p.detail := 'data.charging'; RETURN p;
        END IF;
        IF jsonb_typeof(d -> 'estop') NOT IN ('boolean', 'null') THEN
            p.reason := 'wrong_type'; p.detail := 'data.estop'; RETURN p;
        END IF;
        p.charging := (NULLIF(d -> 'charging', 'null'))::boolean;
        p.estop := COALESCE((NULLIF(d -> 'estop', 'null'))::boolean, p.mode = 'ESTOP');

        j := COALESCE(NULLIF(d -> 'errors', 'null'), '[]'::jsonb);
        IF jsonb_typeof(j) <> 'array' THEN p.reason := 'wrong_type'; p.detail := 'data.errors'; RETURN p; END IF;
        IF jsonb_array_length(j) > 100 THEN
            p.reason := 'invalid_value'; p.detail := 'data.errors: more than 100'; RETURN p;
        END IF;
        FOR err IN SELECT value FROM jsonb_array_elements(j) LOOP
            IF jsonb_typeof(err) <> 'object' THEN
                p.reason := 'wrong_type'; p.detail := 'data.errors[]'; RETURN p;
            END IF;
            IF jsonb_typeof(err -> 'code') IS DISTINCT FROM 'string' THEN
                p.reason := CASE WHEN err ? 'code' THEN 'wrong_type' ELSE 'missing_field' END;
                p.detail := 'data.errors[].code'; RETURN p;
            END IF;
            IF jsonb_typeof(err -> 'level') IS DISTINCT FROM 'string' THEN
                p.reason := CASE WHEN err ? 'level' THEN 'wrong_type' ELSE 'missing_field' END;
                p.detail := 'data.errors[].level'; RETURN p;
            END IF;
            IF err ->> 'level' NOT IN ('WARNING', 'FATAL') THEN
                p.reason := 'invalid_value'; p.detail := 'data.errors[].level ' || left(err ->> 'level', 40);
                RETURN p;
            END IF;
            IF err ? 'message' AND jsonb_typeof(err -> 'message') NOT IN ('string', 'null') THEN
                p.reason := 'wrong_type'; p.detail := 'data.errors[].message'; RETURN p;
            END IF;
        END LOOP;
        p.errors := j;
        p.health := CASE WHEN j @> '[{"level":"FATAL"}]' THEN 'FATAL'
                         WHEN j @> '[{"level":"WARNING"}]' OR p.estop THEN 'WARNING'
                         ELSE 'OK' END;

        j := NULLIF(d -> 'sw_version', 'null');
        IF j IS NOT NULL AND (jsonb_typeof(j) <> 'string' OR length(j #>> '{}') > 100) THEN
            p.reason := 'wrong_type'; p.detail := 'data.sw_version'; RETURN p;
        END IF;
        p.sw_version := j #>> '{}';

        j := NULLIF(d -> 'config_version', 'null');
        IF j IS NOT NULL THEN
            IF jsonb_typeof(j) <> 'number' THEN
                p.reason := 'wrong_type'; p.detail := 'data.config_version'; RETURN p;
            END IF;
            n := j::numeric;
            IF n <> trunc(n) OR n < 0 OR n > 2147483647 THEN
                p.reason := 'invalid_value'; p.detail := 'data.config_version'; RETURN p;
            END IF;
            p.config_version := n::integer;
        END IF;
        j := NULLIF(d -> 'config', 'null');
        IF j IS NOT NULL AND jsonb_typeof(j) <> 'object' THEN
            p.reason := 'wrong_type'; p.detail := 'data.config'; RETURN p;
        END IF;
        p.config := j;
    EXCEPTION WHEN data_exception THEN
        p.reason := 'invalid_value'; p.detail := left(SQLERRM, 200);
    END;
    RETURN p;
END $$;

CREATE OR REPLACE FUNCTION ingest.store_status(p_clientid text, p_topic text, p_received_at timestamptz, p_env jsonb,
                                               p_raw bytea, s ingest.settings) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    p ingest.status_report;
    problem text;
    skewed boolean;
    was_online boolean;
    is_online boolean;
    forward boolean;
    order_ts timestamptz;
BEGIN
    p := ingest.parse_status(p_env, p_clientid, p_received_at);
    problem := COALESCE(p.reason, ingest.vehicle_problem(p_clientid));
    IF problem IS NOT NULL THEN
        PERFORM ingest.reject(p_clientid, p_topic, p_received_at, problem, p.detail,
                              COALESCE(p_raw, convert_to(p_env::text, 'UTF8')), s.rejected_payload_cap);
        RETURN;
    END IF;
    skewed := abs(extract(epoch FROM p_received_at - p.ts)) > extract(epoch FROM s.clock_skew_threshold);
    -- a device time in the future is not trusted for ordering (as for telemetry, 20_telemetry.sql): the latest
    -- state is ordered by the broker's receive time instead, so one bad clock cannot freeze it
    order_ts := CASE WHEN p.ts > p_received_at + s.clock_skew_threshold THEN p_received_at ELSE p.ts END;

    INSERT INTO public.vehicle_status (vehicle_id, ts, received_at, seq, msg_id, mode, battery_pct, charging, estop,
                                       errors, health, sw_version, clock_skewed)
    VALUES (p_clientid, p.ts, p_received_at, p.seq, p.msg_id, p.mode, p.battery_pct, p.charging,
            COALESCE(p.estop, false), p.errors, p.health, p.sw_version, skewed)
    ON CONFLICT (vehicle_id, msg_id) DO NOTHING;
    forward := FOUND;  -- a redelivery changes nothing but liveness

    UPDATE public.vehicle_state st SET
        status_ts = order_ts, status_seq = p.seq, status_received_at = p_received_at,
        mode = p.mode, charging = COALESCE(p.charging, st.charging), estop = p.estop, errors = p.errors,
        health = p.health, sw_version = COALESCE(p.sw_version, st.sw_version),
        battery_pct = CASE WHEN p.battery_pct IS NOT NULL AND (st.telemetry_ts IS NULL OR order_ts >= st.telemetry_ts)
                           THEN p.battery_pct ELSE st.battery_pct END,
        updated_at = now()
     WHERE forward AND st.vehicle_id = p_clientid
       AND (st.status_ts IS NULL OR (st.status_ts, st.status_seq) < (order_ts, p.seq));
    forward := FOUND;

    UPDATE public.vehicle_state st SET
        last_seen_at = GREATEST(st.last_seen_at, p_received_at),
        online = st.online OR st.disconnected_at IS NULL OR p_received_at > st.disconnected_at
     WHERE st.vehicle_id = p_clientid
    RETURNING WITH (OLD AS o, NEW AS n) o.online, n.online INTO was_online, is_online;
    IF is_online AND NOT was_online THEN
        PERFORM ingest.notify_online(p_clientid);
    END IF;

    -- the configuration the vehicle reports having applied (only from its newest status)
    IF forward AND (p.config_version IS NOT NULL OR p.config IS NOT NULL) THEN
        UPDATE public.vehicles v SET
            reported_config_version = COALESCE(p.config_version, v.reported_config_version),
            reported_config = COALESCE(p.config, v.reported_config)
         WHERE v.id = p_clientid
           AND (v.reported_config_version IS DISTINCT FROM COALESCE(p.config_version, v.reported_config_version)
                OR v.reported_config IS DISTINCT FROM COALESCE(p.config, v.reported_config));
    END IF;
END $$;

-- The inbox: exactly the columns the broker's action inserts (emqx/emqx.conf)
CREATE OR REPLACE VIEW ingest.status_inbox AS
    SELECT NULL::text AS clientid, NULL::text AS topic, NULL::text AS payload_b64, NULL::bigint AS received_at_ms
     WHERE false;

-- One inbox row. Raises whatever goes wrong beyond the message's content; the trigger below (and
-- ingest.retry_parked) catch it and park the row.
CREATE OR REPLACE FUNCTION ingest.apply_status(p_clientid text, p_topic text, p_b64 text, p_received_ms bigint)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s ingest.settings;
    received timestamptz := ingest.broker_time(p_received_ms);
    problem text;
    dec record;
BEGIN
    s := ingest.current_settings();
    problem := ingest.topic_problem(p_clientid, p_topic, 'status');
    IF problem IS NOT NULL THEN
        PERFORM ingest.reject(p_clientid, p_topic, received, problem, NULL,
                              ingest.decode_or_null(p_b64), s.rejected_payload_cap);
        RETURN;
    END IF;
    dec := ingest.decode_payload(p_b64, s.max_payload_bytes);
    IF dec.reason IS NULL AND jsonb_typeof(dec.doc) = 'object' AND dec.doc ? 'batch' THEN
        dec.reason := 'bad_batch'; dec.detail := 'batches are accepted on telemetry only';
    END IF;
    IF dec.reason IS NOT NULL THEN
        PERFORM ingest.reject(p_clientid, p_topic, received, dec.reason, dec.detail, dec.raw,
                              s.rejected_payload_cap);
        RETURN;
    END IF;
    PERFORM ingest.store_status(p_clientid, p_topic, received, dec.doc, dec.raw, s);
    RETURN;
END $$;

-- The broker's INSERT: never raises, never waits (the contract in 10_ingest_common.sql).
-- A vehicle with a parked message parks its later ones behind it, so they are applied in order.
CREATE OR REPLACE FUNCTION ingest.status_inbox_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '100ms' AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM ingest.parked p WHERE p.clientid = NEW.clientid) THEN
        PERFORM ingest.park('status', NEW.clientid, to_jsonb(NEW), 'behind');
        RETURN NEW;
    END IF;
    BEGIN
        PERFORM ingest.apply_status(NEW.clientid, NEW.topic, NEW.payload_b64, NEW.received_at_ms);
    EXCEPTION WHEN OTHERS OR query_canceled OR assert_failure THEN
        PERFORM ingest.park('status', NEW.clientid, to_jsonb(NEW), SQLSTATE || ': ' || SQLERRM);
    END;
    RETURN NEW;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- The inbox's trigger
-- ---------------------------------------------------------------------------------------------------
CREATE OR REPLACE TRIGGER status_inbox_insert INSTEAD OF INSERT ON ingest.status_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.status_inbox_insert();

-- fleet_ingest may INSERT into the inbox and do nothing else; no function in schema ingest is callable by PUBLIC.
GRANT INSERT ON ingest.status_inbox TO fleet_ingest;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ingest FROM PUBLIC;
