-- 20_telemetry.sql — fleet/v1/{vid}/telemetry: position and motion at 1 Hz, one envelope or a batch of them
-- (docs/PROTOCOL.md, Telemetry). Each point is checked, appended to the partitioned telemetry table once (a QoS 1
-- redelivery is a no-op) and moves vehicle_state forward only by (device ts, seq); a bad one is dead-lettered.
-- The broker queues it (ingest.telemetry_inbox, sql/100_telemetry_queue.sql) and the worker drains the queue in
-- sets (ingest.drain_telemetry, at the end of this file). This is the hot path: see the cost note in
-- 10_ingest_common.sql and docs/ARCHITECTURE.md, "Telemetry: a queue applied in sets".
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

-- ---------------------------------------------------------------------------------------------------
-- The queue (sql/100_telemetry_queue.sql): the broker appends, the worker drains it in sets
-- ---------------------------------------------------------------------------------------------------
-- One message through the per-message path: what the inbox trigger did before telemetry was queued, and what the
-- drain does with every message its set path leaves. The HTTP fallback (api/vehicle_gateway.py) calls it too, for
-- a verdict on the spot. Never raises (the contract in 10_ingest_common.sql): a vehicle with a parked message parks
-- its later ones behind it, one that cannot be applied is parked, and a point that turns out to be stored already
-- (ingest_telemetry's plain INSERT, see there) is a redelivery, not a failure.
CREATE OR REPLACE FUNCTION ingest.apply_telemetry_row(p_clientid text, p_topic text, p_b64 text, p_received_ms bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '100ms' AS $$
DECLARE
    failed_table text;
    ignored text;
BEGIN
    IF EXISTS (SELECT 1 FROM ingest.parked p WHERE p.clientid = p_clientid) THEN
        PERFORM ingest.park('telemetry', p_clientid,
                            jsonb_build_object('clientid', p_clientid, 'topic', p_topic, 'payload_b64', p_b64,
                                               'received_at_ms', p_received_ms), 'behind');
        RETURN;
    END IF;
    BEGIN
        -- an assignment rather than PERFORM: evaluated as a simple expression, without an executor start
        ignored := ingest.apply_telemetry(p_clientid, p_topic, p_b64, p_received_ms);
    EXCEPTION WHEN OTHERS OR query_canceled OR assert_failure THEN
        GET STACKED DIAGNOSTICS failed_table = TABLE_NAME;
        IF NOT ingest.is_stored_point('telemetry', SQLSTATE, failed_table) THEN
            PERFORM ingest.park('telemetry', p_clientid,
                                jsonb_build_object('clientid', p_clientid, 'topic', p_topic, 'payload_b64', p_b64,
                                                   'received_at_ms', p_received_ms),
                                SQLSTATE || ': ' || SQLERRM);
        END IF;
    END;
END $$;

-- The set path. It takes every message of the set that is a plain point — one envelope, valid, lat and lon
-- present, its device clock within clock_skew_threshold of the broker's — from an active vehicle without parked
-- messages, provided every message of that vehicle in the set is such a point and, when there are several, each
-- has all of heading_deg, speed_mps, battery_pct and odometer_m. It stores them with one INSERT and moves their
-- vehicles' latest state with one UPDATE. The result is what applying them one by one in arrival order gives
-- (tests/sql/test_telemetry_queue.py compares the two): the latest state takes the point with the greatest
-- (ts, seq), the first to arrive among equal ones; a field it lacks keeps its older value, which is what the
-- per-message path's COALESCE gives when the vehicle has one point in the set (with several, an earlier point
-- could have set it first, hence the rule above); liveness takes the latest receive time. A redelivery (same
-- vehicle, ts, msg_id) is stored once. Returns the ids it left to the per-message path (which names the reason of
-- a dead letter, splits batches, flags skewed clocks, parks) and the vehicles that came online. Raises whatever a
-- statement raises: bad base64, UTF-8 or JSON, a number that does not fit, a unique violation, a lock wait past
-- lock_timeout, a deadlock; the caller (ingest.apply_telemetry_part) catches it.
CREATE OR REPLACE FUNCTION ingest.apply_telemetry_set(p_rows ingest.telemetry_inbox[], s ingest.settings,
                                                      p_check_all boolean,
                                                      OUT left_ids bigint[], OUT came_online text[])
-- enable_memoize off: the per-message LATERAL steps below would otherwise be cached by their (jsonb) inputs, and
-- hashing a message to look it up costs more than computing the step once
LANGUAGE plpgsql SET enable_memoize = off AS $$
BEGIN
    -- typed is MATERIALIZED and each value in it is computed once (LATERAL … OFFSET 0): an inlined step would copy
    -- its expressions into every reference, and decode the payload again for each. Only narrow values (the fields,
    -- not the envelope) are carried on.
    WITH typed AS MATERIALIZED (
        SELECT r.id, r.clientid, e.received, e.env ->> 'msg_id' AS msg_id, e.env -> 'ts' AS ts_j,
               e.env -> 'seq' AS seq_j, f.d -> 'lat' AS lat_j, f.d -> 'lon' AS lon_j,
               NULLIF(f.d -> 'heading_deg', 'null') AS heading_j, NULLIF(f.d -> 'speed_mps', 'null') AS speed_j,
               NULLIF(f.d -> 'battery_pct', 'null') AS battery_j, NULLIF(f.d -> 'odometer_m', 'null') AS odometer_j,
               x.extra, c.ok,
               -- every optional field present: only then may a vehicle send several points in one set
               COALESCE(jsonb_typeof(f.d -> 'heading_deg') = 'number' AND jsonb_typeof(f.d -> 'speed_mps') = 'number'
                        AND jsonb_typeof(f.d -> 'battery_pct') = 'number'
                        AND jsonb_typeof(f.d -> 'odometer_m') = 'number', false) AS complete
          FROM unnest(p_rows) r,
               -- the topic check of ingest.topic_problem, and a payload that cannot decode to more than
               -- max_payload_bytes; decoded only then (CASE evaluates in order)
               LATERAL (SELECT ingest.broker_time(r.received_at_ms) AS received,
                               CASE WHEN r.topic = 'fleet/v1/' || r.clientid || '/telemetry'
                                         AND strpos(r.clientid, '/') = 0
                                         AND octet_length(r.payload_b64) BETWEEN 4 AND s.max_payload_bytes / 3 * 4
                                    THEN convert_from(decode(r.payload_b64, 'base64'), 'UTF8')::jsonb END AS env
                        OFFSET 0) e,
               LATERAL (SELECT e.env -> 'data' AS d OFFSET 0) f,
               LATERAL (SELECT CASE WHEN jsonb_typeof(f.d) = 'object'
                                    THEN f.d - ARRAY['lat', 'lon', 'heading_deg', 'speed_mps', 'battery_pct',
                                                     'odometer_m'] END AS extra
                        OFFSET 0) x,
               -- the fast-path checks of ingest.check_envelope and ingest.ingest_telemetry
               LATERAL (SELECT COALESCE(
                        jsonb_typeof(e.env) = 'object' AND e.env -> 'v' = '1'::jsonb AND NOT e.env ? 'batch'
                        AND jsonb_typeof(e.env -> 'msg_id') = 'string'
                        AND length(e.env ->> 'msg_id') BETWEEN 1 AND 64
                        AND jsonb_typeof(e.env -> 'seq') = 'number' AND jsonb_typeof(e.env -> 'ts') = 'number'
                        AND jsonb_typeof(f.d) = 'object'
                        AND NOT e.env ? 'vehicle_id' AND NOT f.d ? 'vehicle_id'
                        AND jsonb_typeof(f.d -> 'lat') = 'number' AND jsonb_typeof(f.d -> 'lon') = 'number'
                        AND COALESCE(jsonb_typeof(f.d -> 'heading_deg'), 'null') IN ('number', 'null')
                        AND COALESCE(jsonb_typeof(f.d -> 'speed_mps'), 'null') IN ('number', 'null')
                        AND COALESCE(jsonb_typeof(f.d -> 'battery_pct'), 'null') IN ('number', 'null')
                        AND COALESCE(jsonb_typeof(f.d -> 'odometer_m'), 'null') IN ('number', 'null')
                        -- every other field (kept in extra) a number
                        AND (x.extra = '{}'::jsonb
                             OR NOT jsonb_path_exists(x.extra, 'strict $.* ? (@.type() != "number")')),
                        false) AS ok
                        OFFSET 0) c
    ), vals AS (
        SELECT t.id, t.clientid, t.received, t.msg_id, t.extra, t.complete, t.heading_j, t.speed_j, t.odometer_j,
               n.lat_n, n.lon_n, n.battery_n, n.ts,
               CASE WHEN n.in_range THEN n.seq_n::bigint END AS seq,
               CASE WHEN n.in_range
                    THEN n.ts_ms = trunc(n.ts_ms) AND n.seq_n = trunc(n.seq_n)
                         AND n.lat_n BETWEEN -90 AND 90 AND n.lon_n BETWEEN -180 AND 180
                         AND COALESCE(n.battery_n BETWEEN 0 AND 100, true)
                         AND n.ts BETWEEN t.received - s.clock_skew_threshold
                                      AND t.received + LEAST(s.clock_skew_threshold, interval '1 day')
                    ELSE false END AS ok
          FROM typed t,
               LATERAL (SELECT v.*, CASE WHEN v.in_range THEN ingest.ms_to_ts(v.ts_ms::bigint) END AS ts
                          FROM (SELECT u.*, COALESCE(t.ok AND u.ts_ms BETWEEN 946684800000 AND 4102444800000
                                                     AND u.seq_n BETWEEN 0 AND 9223372036854775807, false) AS in_range
                                  FROM (SELECT CASE WHEN t.ok THEN t.ts_j::numeric END AS ts_ms,
                                               CASE WHEN t.ok THEN t.seq_j::numeric END AS seq_n,
                                               CASE WHEN t.ok THEN t.lat_j::numeric END AS lat_n,
                                               CASE WHEN t.ok THEN t.lon_j::numeric END AS lon_n,
                                               CASE WHEN t.ok THEN t.battery_j::numeric END AS battery_n
                                        OFFSET 0) u
                                OFFSET 0) v
                        OFFSET 0) n
    ), fast AS (
        SELECT v.id, v.clientid, v.received, v.msg_id, v.seq, v.ts, v.lat_n::float8 AS lat, v.lon_n::float8 AS lon,
               v.heading_j::float8::real AS heading_deg, v.speed_j::float8::real AS speed_mps,
               v.battery_n::float8::real AS battery_pct, v.odometer_j::float8 AS odometer_m,
               NULLIF(v.extra, '{}'::jsonb) AS extra, st.telemetry_ts AS newest
          FROM vals v
          JOIN (SELECT x.clientid FROM vals x
                 GROUP BY x.clientid
                HAVING bool_and(x.ok) AND (count(*) = 1 OR bool_and(x.complete))) ok USING (clientid)
          JOIN public.vehicle_state st ON st.vehicle_id = ok.clientid AND st.vehicle_active
         WHERE NOT EXISTS (SELECT 1 FROM ingest.parked q WHERE q.clientid = ok.clientid)
    ), stored AS (
        -- later than the vehicle's latest point: no row with this ts can be stored (the reasoning of
        -- ingest_telemetry's plain INSERT), so no conflict check. Should one be, after all — a redelivery in the
        -- same set, or of a point first stored as future-dated — the unique violation fails the set, and the caller
        -- runs it again with p_check_all, every row through the INSERT below.
        INSERT INTO public.telemetry (vehicle_id, ts, received_at, seq, msg_id, lat, lon, heading_deg, speed_mps,
                                      battery_pct, odometer_m, extra, clock_skewed)
        SELECT f.clientid, f.ts, f.received, f.seq, f.msg_id, f.lat, f.lon, f.heading_deg, f.speed_mps,
               f.battery_pct, f.odometer_m, f.extra, false
          FROM fast f
         WHERE (f.newest IS NULL OR f.ts > f.newest) AND NOT p_check_all
    ), stored_again AS (
        INSERT INTO public.telemetry (vehicle_id, ts, received_at, seq, msg_id, lat, lon, heading_deg, speed_mps,
                                      battery_pct, odometer_m, extra, clock_skewed)
        SELECT f.clientid, f.ts, f.received, f.seq, f.msg_id, f.lat, f.lon, f.heading_deg, f.speed_mps,
               f.battery_pct, f.odometer_m, f.extra, false
          FROM fast f
         WHERE f.ts <= f.newest OR p_check_all
        ON CONFLICT DO NOTHING  -- a QoS 1 redelivery (same vehicle, ts, msg_id) is stored once
    ), latest AS (
        SELECT DISTINCT ON (f.clientid) f.clientid, f.ts, f.seq, f.received, f.lat, f.lon, f.heading_deg,
               f.speed_mps, f.battery_pct, f.odometer_m, max(f.received) OVER (PARTITION BY f.clientid) AS seen
          FROM fast f
         ORDER BY f.clientid, f.ts DESC, f.seq DESC, f.id
    ), moved AS (
        -- as ingest_telemetry's two UPDATEs: the state moves only forward by (ts, seq); liveness always
        UPDATE public.vehicle_state st SET
            telemetry_ts = CASE WHEN st.telemetry_ts IS NULL OR (st.telemetry_ts, st.telemetry_seq) < (l.ts, l.seq)
                                THEN l.ts ELSE st.telemetry_ts END,
            telemetry_seq = CASE WHEN st.telemetry_ts IS NULL OR (st.telemetry_ts, st.telemetry_seq) < (l.ts, l.seq)
                                 THEN l.seq ELSE st.telemetry_seq END,
            telemetry_received_at = CASE WHEN st.telemetry_ts IS NULL
                                              OR (st.telemetry_ts, st.telemetry_seq) < (l.ts, l.seq)
                                         THEN l.received ELSE st.telemetry_received_at END,
            lat = CASE WHEN st.telemetry_ts IS NULL OR (st.telemetry_ts, st.telemetry_seq) < (l.ts, l.seq)
                       THEN l.lat ELSE st.lat END,
            lon = CASE WHEN st.telemetry_ts IS NULL OR (st.telemetry_ts, st.telemetry_seq) < (l.ts, l.seq)
                       THEN l.lon ELSE st.lon END,
            heading_deg = CASE WHEN st.telemetry_ts IS NULL OR (st.telemetry_ts, st.telemetry_seq) < (l.ts, l.seq)
                               THEN COALESCE(l.heading_deg, st.heading_deg) ELSE st.heading_deg END,
            speed_mps = CASE WHEN st.telemetry_ts IS NULL OR (st.telemetry_ts, st.telemetry_seq) < (l.ts, l.seq)
                             THEN COALESCE(l.speed_mps, st.speed_mps) ELSE st.speed_mps END,
            battery_pct = CASE WHEN st.telemetry_ts IS NULL OR (st.telemetry_ts, st.telemetry_seq) < (l.ts, l.seq)
                               THEN COALESCE(l.battery_pct, st.battery_pct) ELSE st.battery_pct END,
            odometer_m = CASE WHEN st.telemetry_ts IS NULL OR (st.telemetry_ts, st.telemetry_seq) < (l.ts, l.seq)
                              THEN COALESCE(l.odometer_m, st.odometer_m) ELSE st.odometer_m END,
            clock_skewed = CASE WHEN st.telemetry_ts IS NULL OR (st.telemetry_ts, st.telemetry_seq) < (l.ts, l.seq)
                                THEN false ELSE st.clock_skewed END,
            updated_at = CASE WHEN st.telemetry_ts IS NULL OR (st.telemetry_ts, st.telemetry_seq) < (l.ts, l.seq)
                              THEN now() ELSE st.updated_at END,
            last_seen_at = GREATEST(st.last_seen_at, l.seen),
            online = st.online OR st.disconnected_at IS NULL OR l.seen > st.disconnected_at
          FROM latest l
         WHERE st.vehicle_id = l.clientid AND st.vehicle_active
        RETURNING WITH (OLD AS o, NEW AS n) n.vehicle_id, o.online AS was_online, n.online AS is_online
    )
    SELECT (SELECT array_agg(v.id ORDER BY v.id) FROM vals v WHERE NOT EXISTS (SELECT 1 FROM fast f WHERE f.id = v.id)),
           (SELECT array_agg(m.vehicle_id ORDER BY m.vehicle_id) FROM moved m WHERE m.is_online AND NOT m.was_online)
      INTO left_ids, came_online;
END $$;

-- A part of a set: the set path, then the per-message path for what it left, in arrival order. A unique violation
-- (a redelivery the set path did not expect) runs the set path again with the conflict check on every row. When it
-- fails on a message's data (bad base64, UTF-8 or JSON; a number too large for its column), the part is halved
-- until the parts are small, so one bad message sends a few neighbours down the per-message path, not the whole
-- set. Any other failure (a lock held past lock_timeout, a deadlock) sends the whole part one by one: the
-- per-message path parks what meets the lock, and the vehicle's later messages park behind it without waiting.
-- Returns how many messages took the per-message path.
CREATE OR REPLACE FUNCTION ingest.apply_telemetry_part(p_rows ingest.telemetry_inbox[], s ingest.settings)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    done record;
    left_ids bigint[];
    check_all boolean := false;
    vehicle text;
    half integer := cardinality(p_rows) / 2;
    r ingest.telemetry_inbox;
    j integer := 1;
    one_by_one integer := 0;
BEGIN
    LOOP
        BEGIN
            SELECT * INTO done FROM ingest.apply_telemetry_set(p_rows, s, check_all);
            left_ids := COALESCE(done.left_ids, '{}');
            FOREACH vehicle IN ARRAY COALESCE(done.came_online, '{}') LOOP
                PERFORM ingest.notify_online(vehicle);
            END LOOP;
            EXIT;
        EXCEPTION
            WHEN unique_violation THEN
                IF check_all THEN      -- cannot happen with the check; never loop
                    left_ids := NULL;
                    EXIT;
                END IF;
                check_all := true;
            WHEN data_exception THEN
                IF half >= 8 THEN
                    RETURN ingest.apply_telemetry_part(p_rows[1:half], s)
                         + ingest.apply_telemetry_part(p_rows[half + 1:], s);
                END IF;
                left_ids := NULL;
                EXIT;
            WHEN OTHERS OR query_canceled OR assert_failure THEN
                left_ids := NULL;
                EXIT;
        END;
    END LOOP;
    IF left_ids = '{}' THEN
        RETURN 0;
    END IF;
    -- p_rows and left_ids are both in id order: one pass over each
    FOREACH r IN ARRAY p_rows LOOP
        IF left_ids IS NULL OR (j <= cardinality(left_ids) AND left_ids[j] = r.id) THEN
            PERFORM ingest.apply_telemetry_row(r.clientid, r.topic, r.payload_b64, r.received_at_ms);
            one_by_one := one_by_one + 1;
            j := j + 1;
        END IF;
    END LOOP;
    RETURN one_by_one;
END $$;

-- The worker's call (api/ingest_queue.py): take up to p_limit of the oldest queued messages and apply them, in one
-- transaction. Never raises for a message (see apply_telemetry_part); a failure beyond that (the database going
-- away) rolls the transaction back and the messages stay queued. One drain at a time: another caller returns at
-- once with nothing taken, so any number of workers may call it. taken = in_sets + one_by_one.
CREATE OR REPLACE FUNCTION ingest.drain_telemetry(p_limit integer DEFAULT 1000, OUT taken integer,
                                                  OUT in_sets integer, OUT one_by_one integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '100ms' AS $$
DECLARE
    s ingest.settings := ingest.current_settings();
    queued ingest.telemetry_inbox[];
BEGIN
    taken := 0; in_sets := 0; one_by_one := 0;
    IF NOT pg_try_advisory_xact_lock(ingest.telemetry_drain_lock_key()) THEN
        RETURN;
    END IF;
    -- the oldest p_limit visible rows: one range of the primary key (a row another transaction has not committed
    -- yet is invisible here and stays for a later drain; a client's later rows commit after its earlier ones)
    WITH gone AS (
        DELETE FROM ingest.telemetry_inbox i
         WHERE i.id <= COALESCE((SELECT n.id FROM ingest.telemetry_inbox n ORDER BY n.id OFFSET p_limit - 1 LIMIT 1),
                                (SELECT max(n.id) FROM ingest.telemetry_inbox n))
        RETURNING i.*)
    SELECT array_agg(ROW(g.id, g.clientid, g.topic, g.payload_b64, g.received_at_ms)::ingest.telemetry_inbox
                     ORDER BY g.id)
      INTO queued FROM gone g;
    IF queued IS NULL THEN
        RETURN;
    END IF;
    taken := cardinality(queued);
    one_by_one := ingest.apply_telemetry_part(queued, s);
    in_sets := taken - one_by_one;
END $$;

-- The advisory lock that makes drains take turns ("fltq").
CREATE OR REPLACE FUNCTION ingest.telemetry_drain_lock_key() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 1718383729::bigint $$;

-- How much is queued and how old the oldest is, for /metrics and the runbook (docs/OPERATIONS.md). Reads the
-- oldest rows only: the count stops at p_cap.
CREATE OR REPLACE FUNCTION ingest.telemetry_queue_summary(p_cap integer DEFAULT 100000, OUT queued bigint,
                                                          OUT oldest_s double precision)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT (SELECT count(*) FROM (SELECT 1 FROM ingest.telemetry_inbox LIMIT p_cap) q),
           COALESCE((SELECT extract(epoch FROM now() - ingest.broker_time(i.received_at_ms))
                       FROM ingest.telemetry_inbox i ORDER BY i.id LIMIT 1), 0)::float8
$$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ingest FROM PUBLIC;
