-- 002_ingest.sql — the broker's entry points: every inbound vehicle message is validated, deduplicated and
-- routed here, so EMQX and the embedded stand-in behave identically (design.md §4, §7; issue 6).
--
-- The broker's pgsql actions may only INSERT (EMQX batches nothing else, EMQX#17701), so each entry point is a
-- view in schema `ingest` with an INSTEAD OF trigger. The role fleet_ingest may INSERT into those views and do
-- nothing else; the triggers run with the owner's rights (SECURITY DEFINER, pinned search_path).
--
-- Contract with the broker: an INSERT never raises because of what a vehicle sent. Bad content is dead-lettered
-- into rejected_messages and the INSERT succeeds; only infrastructure failures (lock timeouts, a full disk, a
-- bug) raise, so the broker retries those. Exception blocks below catch only data_exception (SQLSTATE class
-- 22: bad base64, invalid UTF-8, invalid JSON, numeric overflow, bad uuid …) and never around a write, so a
-- batch of 100 messages never opens 100 writing subtransactions.
--
-- Cost (bench/sql_ingest.py): one telemetry message is one trigger call, one parse with one exception block,
-- one UPDATE of its vehicle_state row and one INSERT — about 55-60 % of a plain multi-row insert of the same
-- parsed rows. Keep it that way: no extra statements per message on the telemetry path.
--
-- Reason codes in rejected_messages.reason (detail says which field / what was wrong):
--   bad_topic              topic is not fleet/v1/{vid}/{kind} for this inbox
--   topic_client_mismatch  the {vid} in the topic is not the verified client id
--   empty_payload          no payload (an empty retained `connection` payload is ignored instead)
--   bad_base64             payload_b64 is not base64 (a broker-side fault; never a vehicle's)
--   oversize               decoded payload larger than ingest.settings.max_payload_bytes
--   not_utf8               payload is not valid UTF-8
--   not_json               payload is not JSON
--   not_object             the JSON (or a batch item) is not an object
--   missing_field          a required field is absent (detail: its path)
--   wrong_type             a field has the wrong JSON type (detail: its path)
--   unsupported_version    `v` is not 1
--   bad_msg_id             msg_id empty or longer than 64 characters
--   ts_out_of_range        device ts before 2000-01-01 or more than a day after the broker received it
--   invalid_value          a value outside its domain (lat/lon range, mode, error level, state, event, uuid …)
--   vehicle_id_mismatch    the payload's vehicle_id disagrees with the verified client id
--   bad_batch              `batch` not a non-empty array within max_batch_items, or a batch off telemetry
--   unknown_vehicle        no such vehicle
--   vehicle_not_active     the vehicle is pending, revoked or decommissioned
--   unknown_mission        mission event for a mission that does not exist
--   mission_not_assigned   mission event for another vehicle's mission
--   invalid_transition     mission event not allowed from the mission's current state (detail: the state)
--   unknown_event          presence event other than client.connected / client.disconnected
--   acl_denied             the broker denied a publish/subscribe (detail: the action)
-- Not rejections: a redelivered message (same vehicle and msg_id) is stored once and otherwise ignored; an
-- out-of-order message is stored but does not move the latest state backwards.

CREATE SCHEMA ingest;
REVOKE ALL ON SCHEMA ingest FROM PUBLIC;

-- ---------------------------------------------------------------------------------------------------
-- Settings (one row; change with UPDATE ingest.settings SET …)
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE ingest.settings (
    id                    boolean PRIMARY KEY DEFAULT true CHECK (id),
    telemetry_retention   interval NOT NULL DEFAULT '30 days' CHECK (telemetry_retention >= interval '1 day'),
    status_retention      interval NOT NULL DEFAULT '90 days' CHECK (status_retention >= interval '1 day'),
    rejected_retention    interval NOT NULL DEFAULT '30 days' CHECK (rejected_retention >= interval '1 hour'),
    partitions_ahead      integer  NOT NULL DEFAULT 3 CHECK (partitions_ahead BETWEEN 1 AND 60),
    clock_skew_threshold  interval NOT NULL DEFAULT '2 minutes' CHECK (clock_skew_threshold > interval '0'),
    liveness_timeout      interval NOT NULL DEFAULT '120 seconds' CHECK (liveness_timeout >= interval '5 seconds'),
    max_payload_bytes     integer  NOT NULL DEFAULT 262144 CHECK (max_payload_bytes BETWEEN 1024 AND 1048576),
    max_batch_items       integer  NOT NULL DEFAULT 1000 CHECK (max_batch_items BETWEEN 1 AND 100000),
    rejected_payload_cap  integer  NOT NULL DEFAULT 4096 CHECK (rejected_payload_cap BETWEEN 0 AND 1048576)
);
INSERT INTO ingest.settings DEFAULT VALUES;
COMMENT ON TABLE ingest.settings IS 'ingest tunables: retention, partitions, skew threshold, liveness timeout, caps';

-- The settings row, read once per transaction and then kept in a transaction-local custom setting: every
-- inbound message needs it, and a setting lookup is several times cheaper than a query. A change to
-- ingest.settings therefore applies from the next transaction on.
CREATE FUNCTION ingest.current_settings() RETURNS ingest.settings
LANGUAGE plpgsql AS $$
DECLARE
    cached text := current_setting('fleet.ingest_settings', true);
    s ingest.settings;
BEGIN
    IF cached IS NULL OR cached = '' THEN
        SELECT * INTO STRICT s FROM ingest.settings;
        PERFORM set_config('fleet.ingest_settings', s::text, true);
        RETURN s;
    END IF;
    RETURN cached::ingest.settings;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- Columns the ingest path needs beyond 001
-- ---------------------------------------------------------------------------------------------------
ALTER TABLE vehicle_state
    ADD COLUMN connection_state_at        timestamptz,  -- broker receive time of the last connection message
    ADD COLUMN disconnected_connected_at  timestamptz,  -- connected_at of the connection whose end we recorded
    ADD COLUMN clock_skewed               boolean NOT NULL DEFAULT false,
    -- vehicles.status = 'active', kept here by trigger so the hot telemetry path touches one row, not two
    ADD COLUMN vehicle_active             boolean NOT NULL DEFAULT false;

-- Every vehicle has exactly one vehicle_state row from the moment it exists.
INSERT INTO vehicle_state (vehicle_id) SELECT id FROM vehicles ON CONFLICT DO NOTHING;
UPDATE vehicle_state st SET vehicle_active = (v.status = 'active') FROM vehicles v WHERE v.id = st.vehicle_id;

CREATE FUNCTION ingest.sync_vehicle_state() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO public.vehicle_state (vehicle_id, vehicle_active) VALUES (NEW.id, NEW.status = 'active')
    ON CONFLICT (vehicle_id) DO UPDATE SET vehicle_active = EXCLUDED.vehicle_active;
    RETURN NULL;
END $$;
CREATE TRIGGER vehicles_create_state AFTER INSERT ON vehicles
    FOR EACH ROW EXECUTE FUNCTION ingest.sync_vehicle_state();
CREATE TRIGGER vehicles_sync_state AFTER UPDATE OF status ON vehicles
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION ingest.sync_vehicle_state();

-- ---------------------------------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------------------------------
-- Exact (no floating point) epoch milliseconds → timestamptz. Declared STABLE like the timestamptz + interval
-- operator it uses, so the planner inlines it (an IMMUTABLE wrapper around a STABLE operator is never inlined,
-- and a non-inlined SQL function costs a small plan per call on the hot path).
CREATE FUNCTION ingest.ms_to_ts(p_ms bigint) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT timestamptz '1970-01-01 00:00:00+00' + p_ms * interval '1 millisecond' $$;

-- A broker timestamp (ms) as timestamptz; one outside 2000..2100 (never sent by a sane broker) is replaced by
-- the server's own time rather than failing the INSERT.
CREATE FUNCTION ingest.broker_time(p_ms bigint) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN p_ms BETWEEN 946684800000 AND 4102444800000 THEN ingest.ms_to_ts(p_ms) ELSE now() END $$;

CREATE FUNCTION ingest.reject(p_clientid text, p_topic text, p_received_at timestamptz, p_reason text,
                              p_detail text, p_payload bytea, p_cap integer) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO public.rejected_messages (received_at, clientid, topic, reason, detail, payload, payload_size,
                                          payload_truncated)
    VALUES (COALESCE(p_received_at, now()), left(p_clientid, 200), left(p_topic, 500), p_reason,
            left(p_detail, 500), substring(p_payload FROM 1 FOR p_cap), octet_length(p_payload),
            COALESCE(octet_length(p_payload) > p_cap, false))
$$;

-- NULL when the topic is fleet/v1/{clientid}/{kind}; otherwise the reason code.
CREATE FUNCTION ingest.topic_problem(p_clientid text, p_topic text, p_kind text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_topic IS NULL OR split_part(p_topic, '/', 1) <> 'fleet' OR split_part(p_topic, '/', 2) <> 'v1'
             OR split_part(p_topic, '/', 4) <> p_kind OR split_part(p_topic, '/', 5) <> ''
             OR split_part(p_topic, '/', 3) = '' THEN 'bad_topic'
        WHEN p_clientid IS NULL OR split_part(p_topic, '/', 3) <> p_clientid THEN 'topic_client_mismatch'
    END
$$;

-- base64 → bytes → UTF-8 text → jsonb. `raw` is kept for dead-lettering whatever step failed.
CREATE FUNCTION ingest.decode_payload(p_b64 text, p_max_bytes integer,
                                      OUT doc jsonb, OUT raw bytea, OUT reason text, OUT detail text)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    step text;
    txt text;
BEGIN
    IF p_b64 IS NULL OR p_b64 = '' THEN
        reason := 'empty_payload';
        RETURN;
    END IF;
    BEGIN
        step := 'bad_base64';
        raw := decode(p_b64, 'base64');
        IF octet_length(raw) > p_max_bytes THEN
            reason := 'oversize';
            detail := format('%s bytes > %s', octet_length(raw), p_max_bytes);
            RETURN;
        END IF;
        step := 'not_utf8';
        txt := convert_from(raw, 'UTF8');
        step := 'not_json';
        doc := txt::jsonb;
    EXCEPTION WHEN data_exception THEN
        reason := step;
        detail := left(SQLERRM, 200);
        doc := NULL;
    END;
END $$;

-- The raw bytes of a payload that is dead-lettered before decoding (NULL if it is not even base64).
CREATE FUNCTION ingest.decode_or_null(p_b64 text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN decode(p_b64, 'base64');
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END $$;

-- The envelope every vehicle message shares: {"v":1,"msg_id":…,"seq":…,"ts":<ms>,"data":{…}}.
CREATE TYPE ingest.envelope AS (reason text, detail text, msg_id text, seq bigint, ts timestamptz, data jsonb);

CREATE FUNCTION ingest.check_envelope(p_env jsonb, p_clientid text, p_received_at timestamptz)
RETURNS ingest.envelope
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    e ingest.envelope;
    j jsonb;
    n numeric;
BEGIN
    -- Fast path: one expression accepts the common, well-formed envelope. Anything else falls through to the
    -- step-by-step checks below, which name the first problem.
    IF jsonb_typeof(p_env) = 'object' AND p_env -> 'v' = '1'::jsonb
       AND jsonb_typeof(p_env -> 'msg_id') = 'string' AND length(p_env ->> 'msg_id') BETWEEN 1 AND 64
       AND jsonb_typeof(p_env -> 'seq') = 'number' AND jsonb_typeof(p_env -> 'ts') = 'number'
       AND jsonb_typeof(p_env -> 'data') = 'object'
       AND NOT p_env ? 'vehicle_id' AND NOT p_env -> 'data' ? 'vehicle_id'
    THEN
        n := (p_env -> 'ts')::numeric;
        IF n BETWEEN 946684800000 AND 4102444800000 AND n = trunc(n) THEN
            e.ts := ingest.ms_to_ts(n::bigint);
            n := (p_env -> 'seq')::numeric;
            IF e.ts <= p_received_at + interval '1 day' AND n BETWEEN 0 AND 9223372036854775807
               AND n = trunc(n) THEN
                e.msg_id := p_env ->> 'msg_id';
                e.seq := n;
                e.data := p_env -> 'data';
                RETURN e;
            END IF;
            e.ts := NULL;
        END IF;
    END IF;

    IF jsonb_typeof(p_env) IS DISTINCT FROM 'object' THEN
        e.reason := 'not_object'; RETURN e;
    END IF;
    j := p_env -> 'v';
    IF j IS NULL THEN e.reason := 'missing_field'; e.detail := 'v'; RETURN e; END IF;
    IF jsonb_typeof(j) <> 'number' THEN e.reason := 'wrong_type'; e.detail := 'v'; RETURN e; END IF;
    IF j <> '1'::jsonb THEN e.reason := 'unsupported_version'; e.detail := left(j::text, 40); RETURN e; END IF;

    j := p_env -> 'msg_id';
    IF j IS NULL THEN e.reason := 'missing_field'; e.detail := 'msg_id'; RETURN e; END IF;
    IF jsonb_typeof(j) <> 'string' THEN e.reason := 'wrong_type'; e.detail := 'msg_id'; RETURN e; END IF;
    e.msg_id := j #>> '{}';
    IF e.msg_id = '' OR length(e.msg_id) > 64 THEN
        e.reason := 'bad_msg_id'; e.detail := format('length %s', length(e.msg_id)); e.msg_id := NULL; RETURN e;
    END IF;

    j := p_env -> 'seq';
    IF j IS NULL THEN e.reason := 'missing_field'; e.detail := 'seq'; RETURN e; END IF;
    IF jsonb_typeof(j) <> 'number' THEN e.reason := 'wrong_type'; e.detail := 'seq'; RETURN e; END IF;
    n := j::numeric;
    IF n <> trunc(n) OR n < 0 OR n > 9223372036854775807 THEN
        e.reason := 'invalid_value'; e.detail := 'seq must be a non-negative integer'; RETURN e;
    END IF;
    e.seq := n::bigint;

    j := p_env -> 'ts';
    IF j IS NULL THEN e.reason := 'missing_field'; e.detail := 'ts'; RETURN e; END IF;
    IF jsonb_typeof(j) <> 'number' THEN e.reason := 'wrong_type'; e.detail := 'ts'; RETURN e; END IF;
    n := j::numeric;
    IF n <> trunc(n) THEN
        e.reason := 'wrong_type'; e.detail := 'ts must be integer epoch milliseconds'; RETURN e;
    END IF;
    IF n < 946684800000 OR n > 4102444800000 THEN
        e.reason := 'ts_out_of_range'; e.detail := left(j::text, 40); RETURN e;
    END IF;
    e.ts := ingest.ms_to_ts(n::bigint);
    IF e.ts > p_received_at + interval '1 day' THEN
        e.reason := 'ts_out_of_range'; e.detail := 'more than a day in the future'; e.ts := NULL; RETURN e;
    END IF;

    e.data := p_env -> 'data';
    IF e.data IS NULL THEN e.reason := 'missing_field'; e.detail := 'data'; RETURN e; END IF;
    IF jsonb_typeof(e.data) <> 'object' THEN
        e.reason := 'wrong_type'; e.detail := 'data'; e.data := NULL; RETURN e;
    END IF;

    -- the vehicle a message belongs to is the verified client id; a payload that names another is spoofed
    j := COALESCE(e.data -> 'vehicle_id', p_env -> 'vehicle_id');
    IF j IS NOT NULL AND j <> 'null'::jsonb AND (jsonb_typeof(j) <> 'string' OR j #>> '{}' <> p_clientid) THEN
        e.reason := 'vehicle_id_mismatch'; e.detail := left(j::text, 80); e.data := NULL; RETURN e;
    END IF;
    RETURN e;
END $$;

-- NULL when the vehicle exists and is active; otherwise the reason code.
CREATE FUNCTION ingest.vehicle_problem(p_vehicle text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM public.vehicles WHERE id = p_vehicle) THEN 'unknown_vehicle'
                WHEN NOT EXISTS (SELECT 1 FROM public.vehicles WHERE id = p_vehicle AND status = 'active')
                     THEN 'vehicle_not_active' END
$$;

-- An optional JSON number field (absent or null → NULL); raises wrong_type through the caller's checks.
CREATE FUNCTION ingest.is_number_or_null(j jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT j IS NULL OR jsonb_typeof(j) IN ('number', 'null') $$;

CREATE FUNCTION ingest.notify_online(p_vehicle text) RETURNS void
LANGUAGE sql AS $$ SELECT pg_notify('fleet_vehicle_online', json_build_object('vehicle_id', p_vehicle)::text) $$;

-- ---------------------------------------------------------------------------------------------------
-- Telemetry
-- ---------------------------------------------------------------------------------------------------
CREATE TYPE ingest.telemetry_point AS (
    reason text, detail text, msg_id text, seq bigint, ts timestamptz,
    lat double precision, lon double precision, heading_deg real, speed_mps real, battery_pct real,
    odometer_m double precision, extra jsonb,
    raw bytea,   -- the decoded payload (for dead-lettering)
    batch jsonb  -- set, with reason 'batch', when the payload is a {"v":1,"batch":[…]} envelope
);

-- Parse and store one telemetry message (or batch item): dead-letter it, or move the latest state forward and
-- append the point once. Returns the envelope when the payload turns out to be a batch, for the caller to
-- split. p_env: a batch item; otherwise NULL and p_b64 is decoded. This is the hot path: decoding repeats
-- ingest.decode_payload's steps inline, because one function with one exception block per message is
-- measurably cheaper than three nested calls (bench/sql_ingest.py).
CREATE FUNCTION ingest.ingest_telemetry(p_clientid text, p_topic text, p_received_at timestamptz, p_env jsonb,
                                        p_b64 text, s ingest.settings) RETURNS jsonb
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
    skewed := abs(extract(epoch FROM p_received_at - p.ts)) > extract(epoch FROM s.clock_skew_threshold);

    -- Latest state moves forward only by (device ts, seq); vehicle_active is the vehicle check.
    UPDATE public.vehicle_state st SET
        telemetry_ts = p.ts, telemetry_seq = p.seq, telemetry_received_at = p_received_at,
        lat = p.lat, lon = p.lon,
        heading_deg = COALESCE(p.heading_deg, st.heading_deg), speed_mps = COALESCE(p.speed_mps, st.speed_mps),
        battery_pct = COALESCE(p.battery_pct, st.battery_pct), odometer_m = COALESCE(p.odometer_m, st.odometer_m),
        clock_skewed = skewed,
        last_seen_at = GREATEST(st.last_seen_at, p_received_at),
        online = st.online OR st.disconnected_at IS NULL OR p_received_at > st.disconnected_at,
        updated_at = now()
     WHERE st.vehicle_id = p_clientid AND st.vehicle_active
       AND (st.telemetry_ts IS NULL OR (st.telemetry_ts, st.telemetry_seq) < (p.ts, p.seq))
    RETURNING WITH (OLD AS o, NEW AS n) o.online, n.online, o.telemetry_ts INTO was_online, is_online, newest_ts;
    IF NOT FOUND THEN
        -- older than what we have (or a redelivery): only liveness moves
        UPDATE public.vehicle_state st SET
            last_seen_at = GREATEST(st.last_seen_at, p_received_at),
            online = st.online OR st.disconnected_at IS NULL OR p_received_at > st.disconnected_at
         WHERE st.vehicle_id = p_clientid AND st.vehicle_active
        RETURNING WITH (OLD AS o, NEW AS n) o.online, n.online, p.ts INTO was_online, is_online, newest_ts;
        IF NOT FOUND THEN
            PERFORM ingest.reject(p_clientid, p_topic, p_received_at, ingest.vehicle_problem(p_clientid), NULL,
                                  COALESCE(p.raw, convert_to(p_env::text, 'UTF8')), s.rejected_payload_cap);
            RETURN NULL;
        END IF;
    END IF;
    IF is_online AND NOT was_online THEN
        PERFORM ingest.notify_online(p_clientid);
    END IF;

    IF p.ts > newest_ts THEN
        -- later than every point stored for this vehicle (the update above holds its state row locked, so this
        -- cannot race a redelivery): no row with this ts can exist, and the cheaper plain INSERT is safe
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

CREATE FUNCTION ingest.telemetry_inbox_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s ingest.settings := ingest.current_settings();
    received timestamptz := ingest.broker_time(NEW.received_at_ms);
    problem text;
    batch jsonb;
    items jsonb;
    item jsonb;
BEGIN
    problem := ingest.topic_problem(NEW.clientid, NEW.topic, 'telemetry');
    IF problem IS NOT NULL THEN
        PERFORM ingest.reject(NEW.clientid, NEW.topic, received, problem, NULL,
                              ingest.decode_or_null(NEW.payload_b64), s.rejected_payload_cap);
        RETURN NEW;
    END IF;
    batch := ingest.ingest_telemetry(NEW.clientid, NEW.topic, received, NULL, NEW.payload_b64, s);
    IF batch IS NULL THEN
        RETURN NEW;
    END IF;
    -- {"v":1,"batch":[envelope, …]}: every item is checked and stored on its own
    items := batch -> 'batch';
    IF batch -> 'v' IS DISTINCT FROM '1'::jsonb THEN
        PERFORM ingest.reject(NEW.clientid, NEW.topic, received, 'unsupported_version', 'batch',
                              ingest.decode_or_null(NEW.payload_b64), s.rejected_payload_cap);
    ELSIF jsonb_typeof(items) <> 'array' OR jsonb_array_length(items) = 0
          OR jsonb_array_length(items) > s.max_batch_items THEN
        PERFORM ingest.reject(NEW.clientid, NEW.topic, received, 'bad_batch',
                              format('batch must be an array of 1..%s envelopes', s.max_batch_items),
                              ingest.decode_or_null(NEW.payload_b64), s.rejected_payload_cap);
    ELSE
        FOR item IN SELECT value FROM jsonb_array_elements(items) LOOP
            IF jsonb_typeof(item) = 'object' AND item ? 'batch' THEN
                PERFORM ingest.reject(NEW.clientid, NEW.topic, received, 'bad_batch', 'nested batch',
                                      convert_to(item::text, 'UTF8'), s.rejected_payload_cap);
            ELSE
                PERFORM ingest.ingest_telemetry(NEW.clientid, NEW.topic, received, item, NULL, s);
            END IF;
        END LOOP;
    END IF;
    RETURN NEW;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- Status / health
-- ---------------------------------------------------------------------------------------------------
CREATE TYPE ingest.status_report AS (
    reason text, detail text, msg_id text, seq bigint, ts timestamptz,
    mode text, battery_pct real, charging boolean, estop boolean, errors jsonb, health text, sw_version text,
    config_version integer, config jsonb
);

-- Validate one status envelope. health: FATAL if any FATAL error, WARNING if any WARNING error or the
-- emergency stop is engaged, else OK.
CREATE FUNCTION ingest.parse_status(p_env jsonb, p_clientid text, p_received_at timestamptz)
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

CREATE FUNCTION ingest.store_status(p_clientid text, p_topic text, p_received_at timestamptz, p_env jsonb,
                                    p_raw bytea, s ingest.settings) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    p ingest.status_report;
    problem text;
    skewed boolean;
    was_online boolean;
    is_online boolean;
    forward boolean;
BEGIN
    p := ingest.parse_status(p_env, p_clientid, p_received_at);
    problem := COALESCE(p.reason, ingest.vehicle_problem(p_clientid));
    IF problem IS NOT NULL THEN
        PERFORM ingest.reject(p_clientid, p_topic, p_received_at, problem, p.detail,
                              COALESCE(p_raw, convert_to(p_env::text, 'UTF8')), s.rejected_payload_cap);
        RETURN;
    END IF;
    skewed := abs(extract(epoch FROM p_received_at - p.ts)) > extract(epoch FROM s.clock_skew_threshold);

    INSERT INTO public.vehicle_status (vehicle_id, ts, received_at, seq, msg_id, mode, battery_pct, charging, estop,
                                       errors, health, sw_version, clock_skewed)
    VALUES (p_clientid, p.ts, p_received_at, p.seq, p.msg_id, p.mode, p.battery_pct, p.charging,
            COALESCE(p.estop, false), p.errors, p.health, p.sw_version, skewed)
    ON CONFLICT (vehicle_id, msg_id) DO NOTHING;
    forward := FOUND;  -- a redelivery changes nothing but liveness

    UPDATE public.vehicle_state st SET
        status_ts = p.ts, status_seq = p.seq, status_received_at = p_received_at,
        mode = p.mode, charging = COALESCE(p.charging, st.charging), estop = p.estop, errors = p.errors,
        health = p.health, sw_version = COALESCE(p.sw_version, st.sw_version),
        battery_pct = CASE WHEN p.battery_pct IS NOT NULL AND (st.telemetry_ts IS NULL OR p.ts >= st.telemetry_ts)
                           THEN p.battery_pct ELSE st.battery_pct END,
        updated_at = now()
     WHERE forward AND st.vehicle_id = p_clientid
       AND (st.status_ts IS NULL OR (st.status_ts, st.status_seq) < (p.ts, p.seq));
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

CREATE FUNCTION ingest.status_inbox_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s ingest.settings;
    received timestamptz := ingest.broker_time(NEW.received_at_ms);
    problem text;
    dec record;
BEGIN
    s := ingest.current_settings();
    problem := ingest.topic_problem(NEW.clientid, NEW.topic, 'status');
    IF problem IS NOT NULL THEN
        PERFORM ingest.reject(NEW.clientid, NEW.topic, received, problem, NULL,
                              ingest.decode_or_null(NEW.payload_b64), s.rejected_payload_cap);
        RETURN NEW;
    END IF;
    dec := ingest.decode_payload(NEW.payload_b64, s.max_payload_bytes);
    IF dec.reason IS NULL AND jsonb_typeof(dec.doc) = 'object' AND dec.doc ? 'batch' THEN
        dec.reason := 'bad_batch'; dec.detail := 'batches are accepted on telemetry only';
    END IF;
    IF dec.reason IS NOT NULL THEN
        PERFORM ingest.reject(NEW.clientid, NEW.topic, received, dec.reason, dec.detail, dec.raw,
                              s.rejected_payload_cap);
        RETURN NEW;
    END IF;
    PERFORM ingest.store_status(NEW.clientid, NEW.topic, received, dec.doc, dec.raw, s);
    RETURN NEW;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- Mission events (the transitions themselves: mission_apply_event in 003)
-- ---------------------------------------------------------------------------------------------------
CREATE TYPE ingest.mission_report AS (
    reason text, detail text, msg_id text, seq bigint, ts timestamptz,
    mission_id uuid, event text, event_detail jsonb
);

CREATE FUNCTION ingest.parse_mission_event(p_env jsonb, p_clientid text, p_received_at timestamptz)
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
        IF p.event NOT IN ('accepted', 'rejected', 'progress', 'completed', 'failed', 'cancelled') THEN
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

CREATE FUNCTION ingest.mission_inbox_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s ingest.settings;
    received timestamptz := ingest.broker_time(NEW.received_at_ms);
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
    problem := ingest.topic_problem(NEW.clientid, NEW.topic, 'mission');
    IF problem IS NULL THEN
        dec := ingest.decode_payload(NEW.payload_b64, s.max_payload_bytes);
        doc := dec.doc;
        raw := dec.raw;
        problem := dec.reason;
        detail := dec.detail;
    ELSE
        raw := ingest.decode_or_null(NEW.payload_b64);
    END IF;
    IF problem IS NULL THEN
        p := ingest.parse_mission_event(doc, NEW.clientid, received);
        problem := COALESCE(p.reason, ingest.vehicle_problem(NEW.clientid));
        detail := p.detail;
    END IF;
    IF problem IS NULL THEN
        SELECT m.vehicle_id INTO owner FROM public.missions m WHERE m.id = p.mission_id;
        IF NOT FOUND THEN
            problem := 'unknown_mission';
        ELSIF owner <> NEW.clientid THEN
            problem := 'mission_not_assigned';
        END IF;
        detail := p.mission_id::text;
    END IF;
    IF problem IS NULL THEN
        SELECT * INTO result
          FROM public.mission_apply_event(p.mission_id, p.event, 'vehicle', NEW.clientid, p.ts, p.msg_id,
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
        PERFORM ingest.reject(NEW.clientid, NEW.topic, received, problem, detail, raw, s.rejected_payload_cap);
        RETURN NEW;
    END IF;
    UPDATE public.vehicle_state st SET last_seen_at = GREATEST(st.last_seen_at, received)
     WHERE st.vehicle_id = NEW.clientid;
    RETURN NEW;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- Presence: the vehicle's retained connection message (its Last Will) and the broker's client events
-- ---------------------------------------------------------------------------------------------------
CREATE FUNCTION ingest.connection_inbox_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s ingest.settings;
    received timestamptz := ingest.broker_time(NEW.received_at_ms);
    problem text;
    detail text;
    dec record;
    doc jsonb;
    raw bytea;
    e record;
    new_state text;
    was_online boolean;
    is_online boolean;
BEGIN
    s := ingest.current_settings();
    problem := ingest.topic_problem(NEW.clientid, NEW.topic, 'connection');
    IF problem IS NULL THEN
        IF NEW.payload_b64 IS NULL OR NEW.payload_b64 = '' THEN
            RETURN NEW;  -- clearing the retained message is not a state
        END IF;
        dec := ingest.decode_payload(NEW.payload_b64, s.max_payload_bytes);
        doc := dec.doc;
        raw := dec.raw;
        problem := dec.reason;
        detail := dec.detail;
    ELSE
        raw := ingest.decode_or_null(NEW.payload_b64);
    END IF;
    IF problem IS NULL THEN
        e := ingest.check_envelope(doc, NEW.clientid, received);
        problem := e.reason;
        detail := e.detail;
    END IF;
    IF problem IS NULL THEN
        IF e.data -> 'state' IS NULL THEN
            problem := 'missing_field'; detail := 'data.state';
        ELSIF jsonb_typeof(e.data -> 'state') <> 'string' THEN
            problem := 'wrong_type'; detail := 'data.state';
        ELSE
            new_state := e.data ->> 'state';
            IF new_state NOT IN ('ONLINE', 'OFFLINE', 'CONNECTIONBROKEN') THEN
                problem := 'invalid_value'; detail := 'data.state ' || left(new_state, 40);
            END IF;
        END IF;
    END IF;
    problem := COALESCE(problem, ingest.vehicle_problem(NEW.clientid));
    IF problem IS NOT NULL THEN
        PERFORM ingest.reject(NEW.clientid, NEW.topic, received, problem, detail, raw, s.rejected_payload_cap);
        RETURN NEW;
    END IF;
    -- Ordered by broker time: a Last Will carries the ts of the connect it was set at. A goodbye from an
    -- earlier connection (received before the current one started) does not take the vehicle offline.
    UPDATE public.vehicle_state st SET
        connection_state = new_state,
        connection_state_at = received,
        online = CASE WHEN new_state = 'ONLINE'
                      THEN st.online OR st.disconnected_at IS NULL OR received > st.disconnected_at
                      ELSE st.online AND st.connected_at IS NOT NULL AND received < st.connected_at END,
        disconnected_at = CASE WHEN new_state <> 'ONLINE' AND st.online
                                    AND (st.connected_at IS NULL OR received >= st.connected_at)
                               THEN received ELSE st.disconnected_at END,
        disconnect_reason = CASE WHEN new_state <> 'ONLINE' AND st.online
                                      AND (st.connected_at IS NULL OR received >= st.connected_at)
                                 THEN lower(new_state) ELSE st.disconnect_reason END,
        last_seen_at = CASE WHEN new_state = 'CONNECTIONBROKEN' THEN st.last_seen_at
                            ELSE GREATEST(st.last_seen_at, received) END,
        updated_at = now()
     WHERE st.vehicle_id = NEW.clientid
       AND (st.connection_state_at IS NULL OR st.connection_state_at <= received)
    RETURNING WITH (OLD AS o, NEW AS n) o.online, n.online INTO was_online, is_online;
    IF is_online AND NOT was_online THEN
        PERFORM ingest.notify_online(NEW.clientid);
    END IF;
    RETURN NEW;
END $$;

-- client.connected / client.disconnected from the broker. Only role 'vehicle' has presence (an enrolling
-- client is not the vehicle yet). connected_at identifies the connection: a disconnect of an older connection
-- (a takeover's late event, §9 pitfall 11) must not take the reconnected vehicle offline, and a connect
-- processed after its own disconnect must not bring it back.
CREATE FUNCTION ingest.presence_inbox_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    event_at timestamptz := ingest.broker_time(NEW.at_ms);
    conn_at timestamptz := CASE WHEN NEW.connected_at_ms IS NOT NULL THEN ingest.broker_time(NEW.connected_at_ms) END;
BEGIN
    IF NEW.role IS DISTINCT FROM 'vehicle' THEN
        RETURN NEW;
    END IF;
    IF NEW.event = 'client.connected' THEN
        conn_at := COALESCE(conn_at, event_at);
        UPDATE public.vehicle_state st SET
            online = true, connected_at = conn_at, disconnect_reason = NULL,
            last_seen_at = GREATEST(st.last_seen_at, event_at), updated_at = now()
         WHERE st.vehicle_id = NEW.clientid
           AND (st.connected_at IS NULL OR conn_at >= st.connected_at)
           AND (st.disconnected_connected_at IS NULL OR conn_at > st.disconnected_connected_at);
        IF FOUND THEN  -- a new connection: the dispatcher may have missions queued for it
            PERFORM ingest.notify_online(NEW.clientid);
        END IF;
    ELSIF NEW.event = 'client.disconnected' THEN
        UPDATE public.vehicle_state st SET
            online = false, disconnected_at = event_at, disconnect_reason = left(NEW.reason, 100),
            disconnected_connected_at = COALESCE(conn_at, st.connected_at), updated_at = now()
         WHERE st.vehicle_id = NEW.clientid
           AND (st.connected_at IS NULL OR COALESCE(conn_at, event_at) >= st.connected_at);
    ELSE
        PERFORM ingest.reject(NEW.clientid, NULL, event_at, 'unknown_event', left(NEW.event, 100), NULL, 0);
        RETURN NEW;
    END IF;
    IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM public.vehicles WHERE id = NEW.clientid) THEN
        PERFORM ingest.reject(NEW.clientid, NULL, event_at, 'unknown_vehicle', NEW.event, NULL, 0);
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION ingest.authz_denied_inbox_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM ingest.reject(NEW.clientid, NEW.topic, ingest.broker_time(NEW.at_ms), 'acl_denied',
                          'action=' || COALESCE(NEW.action, '?'), NULL, 0);
    RETURN NEW;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- The inbox views (exactly the columns emqx/emqx.conf inserts) and their triggers
-- ---------------------------------------------------------------------------------------------------
CREATE VIEW ingest.telemetry_inbox AS
    SELECT NULL::text AS clientid, NULL::text AS topic, NULL::text AS payload_b64, NULL::bigint AS received_at_ms
     WHERE false;
CREATE VIEW ingest.status_inbox AS SELECT * FROM ingest.telemetry_inbox;
CREATE VIEW ingest.mission_inbox AS SELECT * FROM ingest.telemetry_inbox;
CREATE VIEW ingest.connection_inbox AS SELECT * FROM ingest.telemetry_inbox;
CREATE VIEW ingest.presence_inbox AS
    SELECT NULL::text AS clientid, NULL::text AS event, NULL::text AS reason, NULL::bigint AS at_ms,
           NULL::bigint AS connected_at_ms, NULL::text AS role
     WHERE false;
CREATE VIEW ingest.authz_denied_inbox AS
    SELECT NULL::text AS clientid, NULL::text AS topic, NULL::text AS action, NULL::bigint AS at_ms
     WHERE false;

CREATE TRIGGER telemetry_inbox_insert INSTEAD OF INSERT ON ingest.telemetry_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.telemetry_inbox_insert();
CREATE TRIGGER status_inbox_insert INSTEAD OF INSERT ON ingest.status_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.status_inbox_insert();
CREATE TRIGGER mission_inbox_insert INSTEAD OF INSERT ON ingest.mission_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.mission_inbox_insert();
CREATE TRIGGER connection_inbox_insert INSTEAD OF INSERT ON ingest.connection_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.connection_inbox_insert();
CREATE TRIGGER presence_inbox_insert INSTEAD OF INSERT ON ingest.presence_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.presence_inbox_insert();
CREATE TRIGGER authz_denied_inbox_insert INSTEAD OF INSERT ON ingest.authz_denied_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.authz_denied_inbox_insert();

-- fleet_ingest: INSERT into the inboxes, nothing else (functions are not callable by PUBLIC either).
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ingest FROM PUBLIC;
GRANT USAGE ON SCHEMA ingest TO fleet_ingest;
GRANT INSERT ON ingest.telemetry_inbox, ingest.status_inbox, ingest.mission_inbox, ingest.connection_inbox,
                ingest.presence_inbox, ingest.authz_denied_inbox TO fleet_ingest;
