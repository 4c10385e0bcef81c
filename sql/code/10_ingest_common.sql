-- 10_ingest_common.sql — what every ingest handler shares: the settings lookup, time conversion, dead-lettering,
-- topic and vehicle checks, payload decoding and the envelope check.
--
-- Every inbound vehicle message is validated, deduplicated and routed in SQL, so EMQX and the embedded stand-in
-- behave identically (docs/ARCHITECTURE.md). The broker's pgsql actions may only INSERT (a SELECT template is not
-- supported for batches, docs/EMQX.md §5.2), so each entry point is an inbox in schema `ingest`, one file per
-- topic: 20_telemetry, 21_status, 22_mission, 23_connection (with the broker's presence events), 24_authz_denied,
-- 26_vda5050. Telemetry's inbox is a queue (a plain table, sql/100_telemetry_queue.sql) that the worker applies in
-- sets; every other inbox is a view with an INSTEAD OF trigger that applies the message at once. The role
-- fleet_ingest may INSERT into the inboxes and do nothing else; the triggers and the drain run with the owner's
-- rights (SECURITY DEFINER, pinned search_path).
--
-- Contract with the broker: an INSERT never raises and never waits. EMQX runs a batch (up to batch_size rows) in one
-- transaction and, when PostgreSQL reports ANY error for it, drops the whole batch and counts it as `failed`; it
-- retries only a lost connection (apps/emqx_postgresql/src/emqx_postgresql.erl, on_batch_query/do_sql_query and
-- its error classification; docs/EMQX.md §5.6a). So one message must never be able to fail the others:
-- * bad content is dead-lettered into rejected_messages with a reason, and the INSERT succeeds;
-- * everything else — a row lock someone holds (the trigger functions run with SET lock_timeout = '100ms', so they
--   do not wait behind an operator's transaction or a migration), a deadlock, a statement timeout, a serialization
--   failure, an exception from any function or trigger below — is caught per inbox row (one exception block, so
--   one subtransaction per row) and the row is parked whole in ingest.parked (sql/045_ingest_parked.sql), which has
--   nothing the data can violate. The worker re-applies parked rows in arrival order with back-off
--   (ingest.retry_parked, 25_ingest_parked.sql) and dead-letters a row as `ingest_failed`, with the last error,
--   after ingest.settings.park_max_attempts;
-- * while a vehicle has a parked row, its later rows park behind it (without waiting for a lock first), and its
--   mission events, status, connection and presence messages are re-applied in the order they arrived;
-- * a lost connection (PostgreSQL restarting) rolls the batch back, parked rows included; the broker sends it
--   again and deduplication (msg_id) stores each message once.
-- The telemetry queue meets the contract more simply: its INSERT fires nothing, so it has nothing to catch; the
-- same rules apply inside the worker's drain (ingest.drain_telemetry, 20_telemetry.sql), whose per-message path is
-- the per-row handling above.
-- What remains is an error in parking itself, or in the queue's INSERT (disk full, permissions revoked): the batch
-- fails and the broker counts it, or the drain fails and its set stays queued; either way the worker raises the
-- alarm (docs/OPERATIONS.md, "Ingest: parked messages, the telemetry queue and failed batches").
-- Inside a handler, exception blocks catch only data_exception (SQLSTATE class 22: bad base64, invalid UTF-8,
-- invalid JSON, numeric overflow, bad uuid …) and never around a write.
--
-- Cost (bench/sql_ingest.py): a telemetry message is one row appended to the queue by the broker, then one row of
-- a set in the drain's statements (20_telemetry.sql). The per-message path (one call, one parked-vehicle probe,
-- one subtransaction, one parse with one exception block, one UPDATE of its vehicle_state row, one INSERT and one
-- pg_notify, sent by ingest_telemetry itself: vehicle_state's statement trigger is skipped for that UPDATE, see
-- 81_live_events.sql) is what every other topic pays and what telemetry the set path leaves pays. Keep it that way:
-- no extra statements per message on it, and a call whose result is not needed is an assignment, not PERFORM
-- (which starts an executor each time).
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
--   ingest_failed          could not be applied after park_max_attempts (detail: attempts and the last error);
--                          the payload is kept whole (up to max_payload_bytes), not capped
-- Not rejections: a redelivered message (same vehicle and msg_id) is stored once and otherwise ignored; an
-- out-of-order message is stored but does not move the latest state backwards.

-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times. The row types are in sql/002_ingest.sql.

-- ---------------------------------------------------------------------------------------------------
-- Settings (the table is in sql/002_ingest.sql)
-- ---------------------------------------------------------------------------------------------------
-- The settings row, read once per transaction and then kept in a transaction-local custom setting: every
-- inbound message needs it, and a setting lookup is several times cheaper than a query. A change to
-- ingest.settings therefore applies from the next transaction on.
CREATE OR REPLACE FUNCTION ingest.current_settings() RETURNS ingest.settings
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
-- Helpers
-- ---------------------------------------------------------------------------------------------------
-- Exact (no floating point) epoch milliseconds → timestamptz. Declared STABLE like the timestamptz + interval
-- operator it uses, so the planner inlines it (an IMMUTABLE wrapper around a STABLE operator is never inlined,
-- and a non-inlined SQL function costs a small plan per call on the hot path).
CREATE OR REPLACE FUNCTION ingest.ms_to_ts(p_ms bigint) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT timestamptz '1970-01-01 00:00:00+00' + p_ms * interval '1 millisecond' $$;

-- A broker timestamp (ms) as timestamptz; one outside 2000..2100 (never sent by a sane broker) is replaced by
-- the server's own time rather than failing the INSERT.
CREATE OR REPLACE FUNCTION ingest.broker_time(p_ms bigint) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN p_ms BETWEEN 946684800000 AND 4102444800000 THEN ingest.ms_to_ts(p_ms) ELSE now() END $$;

-- Dead-letter one message — unless its client already has ingest.settings.max_rejected_per_minute dead letters in
-- this broker minute: then it is only counted, by reason, in ingest_rejected_totals (total and not_stored), so a
-- client sending thousands of bad messages a second costs a counter update each, not a stored row each
-- (sql/071_dead_letter_cap.sql). The count is an index probe of at most the cap's rows (rejected_messages_client)
-- and takes no lock, so batches applied in parallel may each store a row past it: the cap holds within a batch and
-- to within the number of parallel batches across them. ingest_failed rows (the worker giving up on a parked
-- message, 25_ingest_parked.sql) are always stored: they are ours, not the client's, and keep the payload whole.
CREATE OR REPLACE FUNCTION ingest.reject(p_clientid text, p_topic text, p_received_at timestamptz, p_reason text,
                                         p_detail text, p_payload bytea, p_cap integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    per_minute integer := (ingest.current_settings()).max_rejected_per_minute;
    received timestamptz := COALESCE(p_received_at, now());
    client text := left(p_clientid, 200);
    this_minute timestamptz := date_trunc('minute', received);
BEGIN
    IF per_minute IS NOT NULL AND client IS NOT NULL AND p_reason <> 'ingest_failed'
       AND (SELECT count(*) FROM (SELECT FROM public.rejected_messages
                                   WHERE clientid = client AND received_at >= this_minute
                                     AND received_at < this_minute + interval '1 minute'
                                   LIMIT per_minute) AS kept) >= per_minute THEN
        INSERT INTO public.ingest_rejected_totals AS t (reason, total, not_stored) VALUES (p_reason, 1, 1)
        ON CONFLICT (reason) DO UPDATE SET total = t.total + 1, not_stored = t.not_stored + 1;
        RETURN;
    END IF;
    INSERT INTO public.rejected_messages (received_at, clientid, topic, reason, detail, payload, payload_size,
                                          payload_truncated)
    VALUES (received, client, left(p_topic, 500), p_reason,
            left(p_detail, 500), substring(p_payload FROM 1 FOR p_cap), octet_length(p_payload),
            COALESCE(octet_length(p_payload) > p_cap, false));
END $$;

-- NULL when the topic is fleet/v1/{clientid}/{kind}; otherwise the reason code.
CREATE OR REPLACE FUNCTION ingest.topic_problem(p_clientid text, p_topic text, p_kind text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_topic IS NULL OR split_part(p_topic, '/', 1) <> 'fleet' OR split_part(p_topic, '/', 2) <> 'v1'
             OR split_part(p_topic, '/', 4) <> p_kind OR split_part(p_topic, '/', 5) <> ''
             OR split_part(p_topic, '/', 3) = '' THEN 'bad_topic'
        WHEN p_clientid IS NULL OR split_part(p_topic, '/', 3) <> p_clientid THEN 'topic_client_mismatch'
    END
$$;

-- base64 → bytes → UTF-8 text → jsonb. `raw` is kept for dead-lettering whatever step failed.
CREATE OR REPLACE FUNCTION ingest.decode_payload(p_b64 text, p_max_bytes integer,
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
CREATE OR REPLACE FUNCTION ingest.decode_or_null(p_b64 text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN decode(p_b64, 'base64');
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION ingest.check_envelope(p_env jsonb, p_clientid text, p_received_at timestamptz)
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
CREATE OR REPLACE FUNCTION ingest.vehicle_problem(p_vehicle text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM public.vehicles WHERE id = p_vehicle) THEN 'unknown_vehicle'
                WHEN NOT EXISTS (SELECT 1 FROM public.vehicles WHERE id = p_vehicle AND status = 'active')
                     THEN 'vehicle_not_active' END
$$;

-- An optional JSON number field (absent or null → NULL); raises wrong_type through the caller's checks.
CREATE OR REPLACE FUNCTION ingest.is_number_or_null(j jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT j IS NULL OR jsonb_typeof(j) IN ('number', 'null') $$;

CREATE OR REPLACE FUNCTION ingest.notify_online(p_vehicle text) RETURNS void
LANGUAGE sql AS $$ SELECT pg_notify('fleet_vehicle_online', json_build_object('vehicle_id', p_vehicle)::text) $$;

-- ---------------------------------------------------------------------------------------------------
-- Parking (the contract above; the table is in sql/045_ingest_parked.sql, the retries in 25_ingest_parked.sql)
-- ---------------------------------------------------------------------------------------------------
-- Park one inbox row as the broker sent it; the worker wakes up on fleet_ingest_parked (one notification per
-- transaction: identical ones are folded).
CREATE OR REPLACE FUNCTION ingest.park(p_inbox text, p_clientid text, p_message jsonb, p_error text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO ingest.parked (inbox, clientid, message, last_error) VALUES (p_inbox, p_clientid, p_message, p_error);
    SELECT pg_notify('fleet_ingest_parked', '');
$$;

-- A unique violation on a telemetry partition is a point stored already: a redelivery, not a failure (the plain
-- INSERT in ingest_telemetry can meet one in a corner case, see there).
CREATE OR REPLACE FUNCTION ingest.is_stored_point(p_inbox text, p_sqlstate text, p_table text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_inbox = 'telemetry' AND p_sqlstate = '23505' AND COALESCE(p_table LIKE 'telemetry%', false)
$$;

-- Nothing in schema ingest is callable by PUBLIC (fleet_ingest only INSERTs into the inbox views).
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ingest FROM PUBLIC;
