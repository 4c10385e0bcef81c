-- 20_telemetry.sql — fleet/v1/{vid}/telemetry: position and motion at 1 Hz, one envelope or a batch of them
-- (docs/PROTOCOL.md, Telemetry). Each point is checked, appended to the partitioned telemetry table once (a QoS 1
-- redelivery is a no-op) and moves vehicle_state forward only by (device ts, seq); a bad one is dead-lettered.
-- This is the hot path: see the cost note in 10_ingest_common.sql.
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

-- Parse and store one telemetry message (or batch item): dead-letter it, or move the latest state forward and
-- append the point once. Returns the envelope when the payload turns out to be a batch, for the caller to
-- split. p_env: a batch item; otherwise NULL and p_b64 is decoded. This is the hot path: decoding repeats
-- ingest.decode_payload's steps inline, because one function with one exception block per message is
-- measurably cheaper than three nested calls (bench/sql_ingest.py).
CREATE OR REPLACE FUNCTION ingest.ingest_telemetry(p_clientid text, p_topic text, p_received_at timestamptz,
                                                   p_env jsonb, p_b64 text, s ingest.settings) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    p ingest.telemetry_point;
    e ingest.envelope;
    d jsonb;
    field text;
    step text := 'invalid_value';
    skewed boolean;
    was_online boolean;
    is_online boolean;
    newest_ts timestamptz;
    in_batch boolean := p_env IS NOT NULL;
    order_ts timestamptz;
    ignored text;
BEGIN
    -- Decode (when p_env is NULL) and validate. No writes inside this block, so its exception handler never
    -- rolls back a write and a batch of messages never opens writing subtransactions.
    <<parse>>
    BEGIN
        IF p_env IS NULL THEN
            IF p_b64 IS NULL OR p_b64 = '' THEN
                p.reason := 'empty_payload'; EXIT parse;
            END IF;
            step := 'bad_base64';
            p.raw := decode(p_b64, 'base64');
            IF octet_length(p.raw) > s.max_payload_bytes THEN
                p.reason := 'oversize';
                p.detail := format('%s bytes > %s', octet_length(p.raw), s.max_payload_bytes);
                EXIT parse;
            END IF;
            step := 'not_utf8';
            field := convert_from(p.raw, 'UTF8');
            step := 'not_json';
            p_env := field::jsonb;
            step := 'invalid_value';
            IF jsonb_typeof(p_env) = 'object' AND p_env ? 'batch' THEN
                p.reason := 'batch'; p.batch := p_env; EXIT parse;
            END IF;
        END IF;

        e := ingest.check_envelope(p_env, p_clientid, p_received_at);
        IF e.reason IS NOT NULL THEN
            p.reason := e.reason; p.detail := e.detail; EXIT parse;
        END IF;
        d := e.data;
        -- Fast path: the usual point (numbers where numbers belong, in range) in two expressions.
        IF jsonb_typeof(d -> 'lat') = 'number' AND jsonb_typeof(d -> 'lon') = 'number'
           AND COALESCE(jsonb_typeof(d -> 'heading_deg'), 'null') IN ('number', 'null')
           AND COALESCE(jsonb_typeof(d -> 'speed_mps'), 'null') IN ('number', 'null')
           AND COALESCE(jsonb_typeof(d -> 'battery_pct'), 'null') IN ('number', 'null')
           AND COALESCE(jsonb_typeof(d -> 'odometer_m'), 'null') IN ('number', 'null')
           AND (d -> 'lat')::numeric BETWEEN -90 AND 90 AND (d -> 'lon')::numeric BETWEEN -180 AND 180
           AND COALESCE((NULLIF(d -> 'battery_pct', 'null'))::numeric BETWEEN 0 AND 100, true)
           -- every other field (kept in extra) a number, by contract (docs/PROTOCOL.md, Telemetry)
           AND NOT jsonb_path_exists(d - ARRAY['lat', 'lon', 'heading_deg', 'speed_mps', 'battery_pct', 'odometer_m',
                                               'vehicle_id'], 'strict $.* ? (@.type() != "number")')
        THEN
            p := ROW(NULL, NULL, e.msg_id, e.seq, e.ts, (d -> 'lat')::float8, (d -> 'lon')::float8,
                     (NULLIF(d -> 'heading_deg', 'null'))::float8::real,
                     (NULLIF(d -> 'speed_mps', 'null'))::float8::real,
                     (NULLIF(d -> 'battery_pct', 'null'))::float8::real, (NULLIF(d -> 'odometer_m', 'null'))::float8,
                     NULLIF(d - ARRAY['lat', 'lon', 'heading_deg', 'speed_mps', 'battery_pct', 'odometer_m',
                                      'vehicle_id'], '{}'::jsonb),
                     p.raw, NULL);
            EXIT parse;
        END IF;
        -- Slow path: name the first problem.
        FOREACH field IN ARRAY ARRAY['lat', 'lon'] LOOP
            IF d -> field IS NULL OR d -> field = 'null'::jsonb THEN
                p.reason := 'missing_field'; p.detail := 'data.' || field; EXIT parse;
            END IF;
        END LOOP;
        FOREACH field IN ARRAY ARRAY['lat', 'lon', 'heading_deg', 'speed_mps', 'battery_pct', 'odometer_m'] LOOP
            IF NOT ingest.is_number_or_null(d -> field) THEN
                p.reason := 'wrong_type'; p.detail := 'data.' || field; EXIT parse;
            END IF;
        END LOOP;
        IF (d -> 'lat')::float8 NOT BETWEEN -90 AND 90 OR (d -> 'lon')::float8 NOT BETWEEN -180 AND 180 THEN
            p.reason := 'invalid_value'; p.detail := 'lat/lon out of range'; EXIT parse;
        END IF;
        IF (NULLIF(d -> 'battery_pct', 'null'))::float8 NOT BETWEEN 0 AND 100 THEN
            p.reason := 'invalid_value'; p.detail := 'data.battery_pct out of 0..100'; EXIT parse;
        END IF;
        SELECT min(x.key) INTO field
          FROM jsonb_each(d - ARRAY['lat', 'lon', 'heading_deg', 'speed_mps', 'battery_pct', 'odometer_m',
                                    'vehicle_id']) AS x
         WHERE jsonb_typeof(x.value) <> 'number';
        IF field IS NOT NULL THEN
            p.reason := 'wrong_type'; p.detail := left('data.' || field || ': extra fields are numbers', 200);
            EXIT parse;
        END IF;
        p.reason := 'invalid_value'; p.detail := 'data: a number out of range';
    EXCEPTION WHEN data_exception THEN  -- bad base64 / UTF-8 / JSON, or e.g. 1e400 does not fit a double
        p.reason := step; p.detail := left(SQLERRM, 200);
    END;
    IF p.reason = 'batch' THEN
        RETURN p.batch;
    END IF;
    IF p.reason IS NOT NULL THEN
        PERFORM ingest.reject(p_clientid, p_topic, p_received_at, p.reason, p.detail,
                              COALESCE(p.raw, convert_to(p_env::text, 'UTF8')), s.rejected_payload_cap);
        RETURN NULL;
    END IF;
    -- A device time further ahead of the broker's than the threshold is flagged and not trusted for ordering:
    -- the latest state is ordered by the broker's receive time instead, or one bad clock would freeze it for up to
    -- a day. A point further behind is flagged only when sent on its own; in a batch it is buffered history.
    IF p.ts > p_received_at + s.clock_skew_threshold THEN
        skewed := true;
        order_ts := p_received_at;
    ELSE
        skewed := NOT in_batch AND p.ts < p_received_at - s.clock_skew_threshold;
        order_ts := p.ts;
    END IF;

    -- Latest state moves forward only by (ordering time, seq); vehicle_active is the vehicle check.
    -- telemetry_ts is that ordering time (the device's, unless it was in the future).
    -- vehicle_state's notify trigger skips these two updates and the notification is sent below: one pg_notify
    -- instead of a statement trigger per message (81_live_events.sql). An error before the flag is cleared rolls it
    -- back with the caller's subtransaction. (`ignored :=` rather than PERFORM: a simple expression, no executor.)
    ignored := set_config('fleet.caller_notifies_vehicle_state', 'on', true);
    UPDATE public.vehicle_state st SET
        telemetry_ts = order_ts, telemetry_seq = p.seq, telemetry_received_at = p_received_at,
        lat = p.lat, lon = p.lon,
        heading_deg = COALESCE(p.heading_deg, st.heading_deg), speed_mps = COALESCE(p.speed_mps, st.speed_mps),
        battery_pct = COALESCE(p.battery_pct, st.battery_pct), odometer_m = COALESCE(p.odometer_m, st.odometer_m),
        clock_skewed = skewed,
        last_seen_at = GREATEST(st.last_seen_at, p_received_at),
        online = st.online OR st.disconnected_at IS NULL OR p_received_at > st.disconnected_at,
        updated_at = now()
     WHERE st.vehicle_id = p_clientid AND st.vehicle_active
       AND (st.telemetry_ts IS NULL OR (st.telemetry_ts, st.telemetry_seq) < (order_ts, p.seq))
    RETURNING WITH (OLD AS o, NEW AS n) o.online, n.online, o.telemetry_ts INTO was_online, is_online, newest_ts;
    IF NOT FOUND THEN
        -- older than what we have (or a redelivery): only liveness moves
        UPDATE public.vehicle_state st SET
            last_seen_at = GREATEST(st.last_seen_at, p_received_at),
            online = st.online OR st.disconnected_at IS NULL OR p_received_at > st.disconnected_at
         WHERE st.vehicle_id = p_clientid AND st.vehicle_active
        RETURNING WITH (OLD AS o, NEW AS n) o.online, n.online, p.ts INTO was_online, is_online, newest_ts;
        IF NOT FOUND THEN
            ignored := set_config('fleet.caller_notifies_vehicle_state', 'off', true);
            PERFORM ingest.reject(p_clientid, p_topic, p_received_at, ingest.vehicle_problem(p_clientid), NULL,
                                  COALESCE(p.raw, convert_to(p_env::text, 'UTF8')), s.rejected_payload_cap);
            RETURN NULL;
        END IF;
    END IF;
    -- the console's notification, as vehicle_state's trigger would have sent it (81_live_events.sql)
    ignored := set_config('fleet.caller_notifies_vehicle_state', 'off', true);
    ignored := pg_notify('fleet_vehicle_state', json_build_object('vehicle_ids', ARRAY[p_clientid])::text);
    IF is_online AND NOT was_online THEN
        PERFORM ingest.notify_online(p_clientid);
    END IF;

    IF p.ts > newest_ts AND NOT skewed THEN
        -- later than every point stored for this vehicle (the update above holds its state row locked, so this
        -- cannot race a redelivery): no row with this ts can exist, and the cheaper plain INSERT is safe. (Only a
        -- redelivery of a point first stored as future-skewed can break that; its unique_violation is a duplicate,
        -- see ingest.run_message in 10_ingest_common.sql.)
        INSERT INTO public.telemetry (vehicle_id, ts, received_at, seq, msg_id, lat, lon, heading_deg, speed_mps,
                                      battery_pct, odometer_m, extra, clock_skewed)
        VALUES (p_clientid, p.ts, p_received_at, p.seq, p.msg_id, p.lat, p.lon, p.heading_deg, p.speed_mps,
                p.battery_pct, p.odometer_m, p.extra, skewed);
    ELSE
        INSERT INTO public.telemetry (vehicle_id, ts, received_at, seq, msg_id, lat, lon, heading_deg, speed_mps,
                                      battery_pct, odometer_m, extra, clock_skewed)
        VALUES (p_clientid, p.ts, p_received_at, p.seq, p.msg_id, p.lat, p.lon, p.heading_deg, p.speed_mps,
                p.battery_pct, p.odometer_m, p.extra, skewed)
        ON CONFLICT DO NOTHING;  -- a QoS 1 redelivery (same vehicle, ts, msg_id) is stored once
    END IF;
    RETURN NULL;
END $$;

-- One inbox row: a message, or a batch of them. Raises whatever goes wrong beyond the message's content; the
-- trigger below (and ingest.retry_parked) catch it and park the row.
CREATE OR REPLACE FUNCTION ingest.apply_telemetry(p_clientid text, p_topic text, p_b64 text, p_received_ms bigint)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s ingest.settings := ingest.current_settings();
    received timestamptz := ingest.broker_time(p_received_ms);
    problem text;
    batch jsonb;
    items jsonb;
    item jsonb;
BEGIN
    problem := ingest.topic_problem(p_clientid, p_topic, 'telemetry');
    IF problem IS NOT NULL THEN
        PERFORM ingest.reject(p_clientid, p_topic, received, problem, NULL,
                              ingest.decode_or_null(p_b64), s.rejected_payload_cap);
        RETURN;
    END IF;
    batch := ingest.ingest_telemetry(p_clientid, p_topic, received, NULL, p_b64, s);
    IF batch IS NULL THEN
        RETURN;
    END IF;
    -- {"v":1,"batch":[envelope, …]}: every item is checked and stored on its own
    items := batch -> 'batch';
    IF batch -> 'v' IS DISTINCT FROM '1'::jsonb THEN
        PERFORM ingest.reject(p_clientid, p_topic, received, 'unsupported_version', 'batch',
                              ingest.decode_or_null(p_b64), s.rejected_payload_cap);
    ELSIF jsonb_typeof(items) <> 'array' OR jsonb_array_length(items) = 0
          OR jsonb_array_length(items) > s.max_batch_items THEN
        PERFORM ingest.reject(p_clientid, p_topic, received, 'bad_batch',
                              format('batch must be an array of 1..%s envelopes', s.max_batch_items),
                              ingest.decode_or_null(p_b64), s.rejected_payload_cap);
    ELSE
        FOR item IN SELECT value FROM jsonb_array_elements(items) LOOP
            IF jsonb_typeof(item) = 'object' AND item ? 'batch' THEN
                PERFORM ingest.reject(p_clientid, p_topic, received, 'bad_batch', 'nested batch',
                                      convert_to(item::text, 'UTF8'), s.rejected_payload_cap);
            ELSE
                PERFORM ingest.ingest_telemetry(p_clientid, p_topic, received, item, NULL, s);
            END IF;
        END LOOP;
    END IF;
END $$;

-- The broker's INSERT: never raises, never waits (the contract in 10_ingest_common.sql). A vehicle with a parked
-- message parks its later ones behind it; a point that turns out to be stored already (ingest_telemetry's plain
-- INSERT, see there) is a redelivery, not a failure.
CREATE OR REPLACE FUNCTION ingest.telemetry_inbox_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '100ms' AS $$
DECLARE
    failed_table text;
    ignored text;
BEGIN
    IF EXISTS (SELECT 1 FROM ingest.parked p WHERE p.clientid = NEW.clientid) THEN
        PERFORM ingest.park('telemetry', NEW.clientid, to_jsonb(NEW), 'behind');
        RETURN NEW;
    END IF;
    BEGIN
        -- an assignment rather than PERFORM: evaluated as a simple expression, without an executor start
        ignored := ingest.apply_telemetry(NEW.clientid, NEW.topic, NEW.payload_b64, NEW.received_at_ms);
    EXCEPTION WHEN OTHERS OR query_canceled OR assert_failure THEN
        GET STACKED DIAGNOSTICS failed_table = TABLE_NAME;
        IF NOT ingest.is_stored_point('telemetry', SQLSTATE, failed_table) THEN
            PERFORM ingest.park('telemetry', NEW.clientid, to_jsonb(NEW), SQLSTATE || ': ' || SQLERRM);
        END IF;
    END;
    RETURN NEW;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- The inbox: exactly the columns the broker's action inserts (emqx/emqx.conf), and its trigger
-- ---------------------------------------------------------------------------------------------------
CREATE OR REPLACE VIEW ingest.telemetry_inbox AS
    SELECT NULL::text AS clientid, NULL::text AS topic, NULL::text AS payload_b64, NULL::bigint AS received_at_ms
     WHERE false;
CREATE OR REPLACE TRIGGER telemetry_inbox_insert INSTEAD OF INSERT ON ingest.telemetry_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.telemetry_inbox_insert();

-- fleet_ingest may INSERT into the inbox and do nothing else; no function in schema ingest is callable by PUBLIC.
GRANT INSERT ON ingest.telemetry_inbox TO fleet_ingest;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ingest FROM PUBLIC;
