-- 26_vda5050.sql — uagv/v2/{manufacturer}/{serialNumber}/state | connection | factsheet: the VDA 5050 2.0 profile's
-- inbound messages (docs/VDA5050.md). One inbox for the three; each message is
--   1. tied to its vehicle: the client id is our vehicle id, and the topic's manufacturer/serialNumber must be that
--      vehicle's VDA identity (sql/060_vda5050.sql), and so must the payload's;
--   2. validated against the official JSON schema of its topic (vda5050_schemas, loaded from the installed package
--      by fleetcore/vda5050.py) by ingest.vda5050_schema_problem below;
--   3. translated into what our own protocol would have said and handed to the same handlers: a state is a status
--      report (ingest.store_status, 21_status.sql) plus a telemetry point (ingest.ingest_telemetry,
--      20_telemetry.sql) plus mission events (mission_apply_event, 30_mission_transitions.sql); a connection message
--      goes through the connection inbox (23_connection.sql); a factsheet becomes a capability sheet.
-- Like every inbox, an INSERT never raises because of what a vehicle sent: bad content is dead-lettered into
-- rejected_messages with the reason codes of 10_ingest_common.sql; a schema violation is missing_field, wrong_type
-- or invalid_value with the schema's name and the JSON path in the detail.
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

-- ---------------------------------------------------------------------------------------------------
-- JSON schema validation
-- ---------------------------------------------------------------------------------------------------
-- The keywords the official schemas use (2.0 and 2.1): type (one or a list), required, properties, items, enum,
-- minimum, maximum, format date-time, and $ref into #/definitions. Any other keyword (description, examples,
-- unit, title …) does not constrain. Properties a schema does not name are allowed, as in the schemas
-- themselves (no additionalProperties). Returns the first problem, or NULL reason when the value conforms.
-- The walk itself is ingest.vda5050_schema_check; this is its one entry point with named results.
CREATE OR REPLACE FUNCTION ingest.vda5050_schema_problem(p_value jsonb, p_schema jsonb, p_root jsonb, p_path text,
                                                         OUT reason text, OUT detail text)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    problem text[];
BEGIN
    -- A schema read from vda5050_schemas arrives compressed (it is larger than a TOAST chunk), and every operator
    -- applied to it would decompress all of it again; `|| '{}'` hands back the decompressed document once.
    problem := ingest.vda5050_schema_check(
        p_value, CASE WHEN jsonb_typeof(p_schema) = 'object' THEN p_schema || '{}'::jsonb ELSE p_schema END,
        CASE WHEN jsonb_typeof(p_root) = 'object' THEN p_root || '{}'::jsonb ELSE p_root END, p_path);
    reason := problem[1]; detail := problem[2];
END $$;

-- The schema keyword type: one type or a list of them (null or an empty list allows anything); an integral number
-- is also an integer. SQL, so that it is inlined into the walk's expressions.
CREATE OR REPLACE FUNCTION ingest.vda5050_type_ok(p_types jsonb, p_actual text, p_value jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_types IS NULL OR p_types IN ('[]'::jsonb, 'null'::jsonb)
           OR (jsonb_typeof(p_types) IN ('string', 'array')
               AND (p_types ? p_actual
                    OR (p_actual = 'number' AND p_types ? 'integer' AND p_value::text::numeric % 1 = 0)))
$$;

-- The recursive walk: {reason, detail} of the first problem, NULL when the value conforms. It runs once per node of
-- every inbound message (a state has a few hundred), so it is written for PL/pgSQL's fast path: every statement is
-- a plain expression (no SELECT, which would start an executor per node) except the one jsonb_each per object,
-- and it calls itself by assignment.
CREATE OR REPLACE FUNCTION ingest.vda5050_schema_check(p_value jsonb, p_schema jsonb, p_root jsonb, p_path text)
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    sch jsonb := p_schema;
    actual text := jsonb_typeof(p_value);
    types jsonb;
    required jsonb;
    props jsonb;
    items jsonb;
    sub jsonb;
    key text;
    val jsonb;
    problem text[];
    n numeric;
BEGIN
    IF sch ? '$ref' THEN
        -- '#/definitions/action' → the root's definitions.action
        sch := p_root #> string_to_array(substr(sch ->> '$ref', 3), '/');
        IF sch IS NULL THEN
            RETURN ARRAY['invalid_value', p_path || ': unresolved ' || (p_schema ->> '$ref')];
        END IF;
    END IF;
    types := sch -> 'type';
    IF NOT ingest.vda5050_type_ok(types, actual, p_value) THEN
        RETURN ARRAY['wrong_type', p_path || ' must be ' || (sch ->> 'type')];
    END IF;
    IF sch ? 'enum' AND NOT (sch -> 'enum') @> jsonb_build_array(p_value) THEN
        RETURN ARRAY['invalid_value', p_path || ' ' || left(p_value::text, 60) || ' not in its enum'];
    END IF;
    IF actual = 'number' THEN
        n := p_value::text::numeric;
        IF (sch ? 'minimum' AND n < (sch ->> 'minimum')::numeric)
           OR (sch ? 'maximum' AND n > (sch ->> 'maximum')::numeric) THEN
            RETURN ARRAY['invalid_value', p_path || ' ' || n || ' out of range'];
        END IF;
    ELSIF actual = 'string' AND sch ->> 'format' = 'date-time' THEN
        IF ingest.vda5050_epoch_ms(p_value #>> '{}') IS NULL THEN
            RETURN ARRAY['invalid_value', p_path || ' is not an ISO 8601 date-time'];
        END IF;
    ELSIF actual = 'object' THEN
        required := sch -> 'required';
        IF jsonb_typeof(required) = 'array' THEN
            FOR i IN 0 .. jsonb_array_length(required) - 1 LOOP
                key := required ->> i;
                IF NOT p_value ? key THEN
                    RETURN ARRAY['missing_field', p_path || '.' || key];
                END IF;
            END LOOP;
        END IF;
        props := sch -> 'properties';
        IF jsonb_typeof(props) = 'object' THEN
            -- in the value's key order, as before: the first problem reported does not depend on the schema's order
            FOR key, val IN SELECT e.key, e.value FROM jsonb_each(p_value) e LOOP
                sub := props -> key;
                -- a scalar whose schema says no more than its type is checked here, without a call
                IF sub IS NOT NULL AND jsonb_typeof(val) NOT IN ('object', 'array')
                   AND NOT sub ?| '{$ref,enum,minimum,maximum,format}'::text[] THEN
                    types := sub -> 'type';
                    IF NOT ingest.vda5050_type_ok(types, jsonb_typeof(val), val) THEN
                        RETURN ARRAY['wrong_type', p_path || '.' || key || ' must be ' || (sub ->> 'type')];
                    END IF;
                ELSIF sub IS NOT NULL THEN
                    problem := ingest.vda5050_schema_check(val, sub, p_root, p_path || '.' || key);
                    IF problem IS NOT NULL THEN RETURN problem; END IF;
                END IF;
            END LOOP;
        END IF;
    ELSIF actual = 'array' AND sch ? 'items' THEN
        items := sch -> 'items';
        FOR i IN 0 .. jsonb_array_length(p_value) - 1 LOOP
            problem := ingest.vda5050_schema_check(p_value -> i, items, p_root, p_path || '[' || i || ']');
            IF problem IS NOT NULL THEN RETURN problem; END IF;
        END LOOP;
    END IF;
    RETURN NULL;
END $$;

-- An ISO 8601 date-time (the schemas' format) as epoch milliseconds; NULL when it is not one. Only a full
-- date, a time and a zone are accepted (the standard writes "YYYY-MM-DDTHH:mm:ss.ffZ").
CREATE OR REPLACE FUNCTION ingest.vda5050_epoch_ms(p_text text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    -- pg_input_is_valid rather than an EXCEPTION block (a subtransaction on every call: once per date-time node)
    IF p_text !~ '^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d(:?\d\d)?)$'
       OR NOT pg_input_is_valid(p_text, 'timestamptz') THEN
        RETURN NULL;
    END IF;
    RETURN floor(extract(epoch FROM p_text::timestamptz) * 1000)::bigint;
END $$;

-- The inverse of fleetcore/vda5050.py Identity.to_map: map metres (x east, y north) → latitude/longitude.
CREATE OR REPLACE FUNCTION ingest.vda5050_to_lat_lon(p_x float8, p_y float8, p_origin_lat float8, p_origin_lon float8,
                                                     OUT lat float8, OUT lon float8)
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_origin_lat + degrees(p_y / 6371008.8),
           p_origin_lon + degrees(p_x / (6371008.8 * cos(radians(p_origin_lat))))
$$;

-- ---------------------------------------------------------------------------------------------------
-- state → status, telemetry, mission progress
-- ---------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION ingest.vda5050_apply_state(p_clientid text, p_topic text, p_received_at timestamptz,
                                                      p_doc jsonb, p_raw bytea, p_vda public.vda5050_vehicles,
                                                      s ingest.settings) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    ts_ms bigint := ingest.vda5050_epoch_ms(p_doc ->> 'timestamp');
    msg_id text := format('vda-%s-%s', p_doc ->> 'headerId', ts_ms);
    pos jsonb := p_doc -> 'agvPosition';
    vel jsonb := p_doc -> 'velocity';
    ll record;
    errors jsonb;
    estop boolean;
    telemetry jsonb;
    status jsonb;
    node_seq bigint;
    problem text;
    ord record;
    event_prefix text;
    total integer;
    left_nodes integer;
    failure text;
    r record;
BEGIN
    -- Translate first, writing nothing: a number the schema allows but a double or bigint cannot hold (x: 1e400)
    -- raises here, and is dead-lettered as invalid_value instead of failing the broker's INSERT.
    BEGIN
        -- the position, when the vehicle knows it, is a telemetry point
        IF pos IS NOT NULL AND (pos -> 'positionInitialized') = 'true'::jsonb THEN
            ll := ingest.vda5050_to_lat_lon((pos ->> 'x')::float8, (pos ->> 'y')::float8, p_vda.origin_lat,
                                            p_vda.origin_lon);
            telemetry := jsonb_build_object(
                'v', 1, 'msg_id', msg_id, 'seq', (p_doc -> 'headerId'), 'ts', ts_ms,
                'data', jsonb_strip_nulls(jsonb_build_object(
                    'lat', ll.lat, 'lon', ll.lon,
                    -- theta: radians counter-clockwise from the map's x axis (east); heading: degrees clockwise
                    -- from north
                    'heading_deg', round(((450 - degrees((pos ->> 'theta')::float8))::numeric % 360), 2),
                    'speed_mps', CASE WHEN vel IS NOT NULL THEN
                                     round(sqrt(COALESCE((vel ->> 'vx')::float8, 0) ^ 2
                                                + COALESCE((vel ->> 'vy')::float8, 0) ^ 2)::numeric, 3) END,
                    'battery_pct', p_doc #> '{batteryState,batteryCharge}')));
        END IF;
        -- health: errors with their levels, and the safety state; a paused vehicle counts as stopped (an
        -- operator's e-stop reaches a VDA vehicle as startPause, api/emergency_commands.py)
        SELECT COALESCE(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                   'code', e ->> 'errorType', 'level', e ->> 'errorLevel', 'message', e ->> 'errorDescription',
                   'references', e -> 'errorReferences'))), '[]'::jsonb)
          INTO errors FROM jsonb_array_elements(p_doc -> 'errors') e;
        estop := COALESCE((p_doc ->> 'paused')::boolean, false) OR p_doc #>> '{safetyState,eStop}' <> 'NONE';
        status := jsonb_build_object(
            'v', 1, 'msg_id', msg_id, 'seq', (p_doc -> 'headerId'), 'ts', ts_ms,
            'data', jsonb_strip_nulls(jsonb_build_object(
                'mode', CASE p_doc ->> 'operatingMode' WHEN 'AUTOMATIC' THEN 'AUTO' WHEN 'SEMIAUTOMATIC' THEN 'AUTO'
                                                       WHEN 'MANUAL' THEN 'MANUAL' ELSE 'SERVICE' END,
                'battery_pct', p_doc #> '{batteryState,batteryCharge}',
                'charging', p_doc #> '{batteryState,charging}',
                'estop', estop,
                'errors', errors)));
        node_seq := (p_doc ->> 'lastNodeSequenceId')::bigint;
    EXCEPTION WHEN data_exception THEN
        problem := left(SQLERRM, 200);
    END;
    IF problem IS NOT NULL THEN
        PERFORM ingest.reject(p_clientid, p_topic, p_received_at, 'invalid_value', 'state: ' || problem, p_raw,
                              s.rejected_payload_cap);
        RETURN;
    END IF;
    IF telemetry IS NOT NULL THEN
        PERFORM ingest.ingest_telemetry(p_clientid, p_topic, p_received_at, telemetry, NULL, s);
    END IF;
    PERFORM ingest.store_status(p_clientid, p_topic, p_received_at, status, p_raw, s);

    -- instant actions we sent: their last reported status
    UPDATE public.vda5050_instant_actions ia SET status = a ->> 'actionStatus', status_at = p_received_at
      FROM jsonb_array_elements(p_doc -> 'actionStates') a
     WHERE ia.action_id = a ->> 'actionId' AND ia.vehicle_id = p_clientid
       AND ia.status IS DISTINCT FROM a ->> 'actionStatus';

    -- an order the vehicle refused: an error that references its orderId, while we wait for it
    FOR r IN SELECT o.order_id, o.mission_id, e ->> 'errorType' AS error_type, e ->> 'errorDescription' AS why
               FROM jsonb_array_elements(p_doc -> 'errors') e
               CROSS JOIN LATERAL jsonb_array_elements(COALESCE(e -> 'errorReferences', '[]'::jsonb)) ref
               JOIN public.vda5050_orders o ON o.order_id = ref ->> 'referenceValue' AND o.vehicle_id = p_clientid
               JOIN public.missions m ON m.id = o.mission_id AND m.state IN ('dispatched', 'cancel_requested')
              WHERE ref ->> 'referenceKey' = 'orderId' AND o.seen_at IS NULL
                AND o.order_id IS DISTINCT FROM p_doc ->> 'orderId' LOOP
        PERFORM public.mission_apply_event(r.mission_id, 'rejected', 'vehicle', p_clientid, ingest.ms_to_ts(ts_ms),
                                           'vda:' || r.order_id || ':rejected', jsonb_build_object(
                                               'reason', left(concat_ws(': ', r.error_type, r.why), 500)));
    END LOOP;

    -- the order it is working on
    SELECT o.*, m.state AS mission_state, m.pending_command INTO ord
      FROM public.vda5050_orders o JOIN public.missions m ON m.id = o.mission_id
     WHERE o.order_id = p_doc ->> 'orderId' AND o.vehicle_id = p_clientid;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE public.vda5050_orders SET seen_at = COALESCE(seen_at, p_received_at) WHERE order_id = ord.order_id;
    event_prefix := 'vda:' || ord.order_id || ':';
    IF ord.mission_state = 'dispatched' THEN
        PERFORM public.mission_apply_event(ord.mission_id, 'accepted', 'vehicle', p_clientid, ingest.ms_to_ts(ts_ms),
                                           event_prefix || 'accepted', NULL);
    END IF;

    -- an operator's pause / resume (startPause / stopPause) is confirmed by the state's `paused`
    IF ord.pending_command = 'pause' AND (p_doc -> 'paused') = 'true'::jsonb THEN
        PERFORM public.mission_apply_event(ord.mission_id, 'paused', 'vehicle', p_clientid, ingest.ms_to_ts(ts_ms),
                                           msg_id, NULL);
    ELSIF ord.pending_command = 'resume' AND COALESCE((p_doc -> 'paused') = 'false'::jsonb, true) THEN
        PERFORM public.mission_apply_event(ord.mission_id, 'resumed', 'vehicle', p_clientid, ingest.ms_to_ts(ts_ms),
                                           msg_id, NULL);
    END IF;

    -- failed: a FATAL error, or one of the order's actions FAILED
    SELECT COALESCE(
        (SELECT 'FATAL ' || concat_ws(': ', e ->> 'errorType', e ->> 'errorDescription')
           FROM jsonb_array_elements(p_doc -> 'errors') e WHERE e ->> 'errorLevel' = 'FATAL' LIMIT 1),
        (SELECT 'action ' || (a ->> 'actionType') || ' failed' || COALESCE(': ' || (a ->> 'resultDescription'), '')
           FROM jsonb_array_elements(p_doc -> 'actionStates') a
          WHERE a ->> 'actionId' = ANY (ord.action_ids) AND a ->> 'actionStatus' = 'FAILED' LIMIT 1))
      INTO failure;
    -- cancelled: the cancelOrder we sent for this mission has finished
    IF EXISTS (SELECT 1 FROM public.vda5050_instant_actions ia
                WHERE ia.mission_id = ord.mission_id AND ia.action_type = 'cancelOrder' AND ia.status = 'FINISHED') THEN
        PERFORM public.mission_apply_event(ord.mission_id, 'cancelled', 'vehicle', p_clientid, ingest.ms_to_ts(ts_ms),
                                           event_prefix || 'cancelled', jsonb_build_object('reason', 'cancelOrder'));
        RETURN;
    END IF;
    IF failure IS NOT NULL THEN
        PERFORM public.mission_apply_event(ord.mission_id, 'failed', 'vehicle', p_clientid, ingest.ms_to_ts(ts_ms),
                                           event_prefix || 'failed', jsonb_build_object('reason', left(failure, 500)));
        RETURN;
    END IF;

    total := jsonb_array_length(ord.message -> 'nodes');
    left_nodes := jsonb_array_length(p_doc -> 'nodeStates');
    -- completed: the last node reached, nothing left to drive, every action of the order finished
    IF left_nodes = 0 AND jsonb_array_length(p_doc -> 'edgeStates') = 0 AND p_doc ->> 'lastNodeId' = ord.last_node_id
       AND NOT EXISTS (SELECT 1 FROM unnest(ord.action_ids) id
                        WHERE NOT (p_doc -> 'actionStates') @> jsonb_build_array(
                                      jsonb_build_object('actionId', id, 'actionStatus', 'FINISHED'))) THEN
        PERFORM public.mission_apply_event(ord.mission_id, 'completed', 'vehicle', p_clientid, ingest.ms_to_ts(ts_ms),
                                           event_prefix || 'completed', NULL);
        RETURN;
    END IF;
    -- progress: once per node reached (or when it starts driving)
    IF ((p_doc -> 'driving') = 'true'::jsonb OR node_seq > 0) AND node_seq IS DISTINCT FROM ord.last_node_seq THEN
        PERFORM public.mission_apply_event(ord.mission_id, 'progress', 'vehicle', p_clientid, ingest.ms_to_ts(ts_ms),
            event_prefix || 'node:' || (p_doc ->> 'lastNodeSequenceId'), jsonb_build_object('progress', jsonb_build_object(
                'percent', round(100.0 * (total - left_nodes) / GREATEST(total, 1), 1),
                'step', p_doc ->> 'lastNodeId')));
        UPDATE public.vda5050_orders SET last_node_seq = node_seq WHERE order_id = ord.order_id;
    END IF;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- factsheet → capability sheet
-- ---------------------------------------------------------------------------------------------------
-- The whole factsheet is the sheet's document; the typed fields come from protocolFeatures.agvActions (the action
-- types it performs: what a mission's tasks become), physicalParameters.speedMax and the heaviest loadSet.
CREATE OR REPLACE FUNCTION ingest.vda5050_apply_factsheet(p_clientid text, p_topic text, p_received_at timestamptz,
                                                          p_doc jsonb, p_raw bytea, s ingest.settings) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    sheet jsonb := p_doc - ARRAY['headerId', 'timestamp'];
    next_version integer;
    task_types text[];
    max_payload real;
    max_speed real;
BEGIN
    BEGIN  -- typed fields first, writing nothing (a weight of 1e40 does not fit a real)
        SELECT array_agg(DISTINCT a ->> 'actionType') INTO task_types
          FROM jsonb_array_elements(p_doc #> '{protocolFeatures,agvActions}') a;
        SELECT max((l ->> 'maxWeight')::real) INTO max_payload
          FROM jsonb_array_elements(COALESCE(p_doc #> '{loadSpecification,loadSets}', '[]'::jsonb)) l;
        max_speed := (p_doc #>> '{physicalParameters,speedMax}')::real;
    EXCEPTION WHEN data_exception THEN
        PERFORM ingest.reject(p_clientid, p_topic, p_received_at, 'invalid_value', 'factsheet: ' || left(SQLERRM, 200),
                              p_raw, s.rejected_payload_cap);
        RETURN;
    END;
    IF EXISTS (SELECT 1 FROM public.vehicles v JOIN public.vehicle_capabilities c
                 ON c.vehicle_id = v.id AND c.version = v.capabilities_version
                WHERE v.id = p_clientid AND c.document = sheet) THEN
        RETURN;  -- unchanged: no new version
    END IF;
    SELECT COALESCE(max(version), 0) + 1 INTO next_version FROM public.vehicle_capabilities WHERE vehicle_id = p_clientid;
    INSERT INTO public.vehicle_capabilities (vehicle_id, version, document, task_types, max_payload_kg, max_speed_mps,
                                             battery_capacity_wh, source)
    VALUES (p_clientid, next_version, sheet, task_types, max_payload, max_speed, NULL, 'vda5050_factsheet');
    UPDATE public.vehicles SET capabilities_version = next_version WHERE id = p_clientid;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- The inbox
-- ---------------------------------------------------------------------------------------------------
-- One inbox row. Raises whatever goes wrong beyond the message's content; the trigger below (and
-- ingest.retry_parked) catch it and park the row, as for our own topics.
CREATE OR REPLACE FUNCTION ingest.apply_vda5050(p_clientid text, p_topic text, p_b64 text, p_received_ms bigint)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s ingest.settings;
    received timestamptz := ingest.broker_time(p_received_ms);
    parts text[] := string_to_array(p_topic, '/');
    subtopic text := parts[5];
    vda public.vda5050_vehicles;
    problem text;
    detail text;
    dec record;
    doc jsonb;
    raw bytea;
    schema_doc jsonb;
    v record;
BEGIN
    s := ingest.current_settings();
    IF p_topic IS NULL OR array_length(parts, 1) <> 5 OR parts[1] <> 'uagv' OR parts[2] <> 'v2'
       OR subtopic NOT IN ('state', 'connection', 'factsheet') THEN
        problem := 'bad_topic';
    ELSE
        SELECT * INTO vda FROM public.vda5050_vehicles WHERE vehicle_id = p_clientid;
        IF NOT FOUND THEN
            problem := COALESCE(ingest.vehicle_problem(p_clientid), 'topic_client_mismatch');
            detail := 'not a VDA 5050 vehicle';
        ELSIF vda.manufacturer <> parts[3] OR vda.serial_number <> parts[4] THEN
            problem := 'topic_client_mismatch';
            detail := format('%s is %s/%s', p_clientid, vda.manufacturer, vda.serial_number);
        END IF;
    END IF;
    IF problem IS NULL THEN
        IF subtopic <> 'state' AND (p_b64 IS NULL OR p_b64 = '') THEN
            RETURN;  -- clearing a retained connection or factsheet message is not a message
        END IF;
        dec := ingest.decode_payload(p_b64, s.max_payload_bytes);
        doc := dec.doc; raw := dec.raw; problem := dec.reason; detail := dec.detail;
    ELSE
        raw := ingest.decode_or_null(p_b64);
    END IF;
    IF problem IS NULL THEN
        SELECT document INTO schema_doc FROM public.vda5050_schemas WHERE name = subtopic;
        IF schema_doc IS NULL THEN
            -- the deployment's fault, not the vehicle's: stored anyway, so nothing is lost once it is fixed
            problem := 'invalid_value'; detail := 'no VDA 5050 schema loaded for ' || subtopic;
        ELSE
            SELECT * INTO v FROM ingest.vda5050_schema_problem(doc, schema_doc, schema_doc, subtopic);
            problem := v.reason; detail := v.detail;
        END IF;
    END IF;
    IF problem IS NULL AND (doc ->> 'manufacturer' <> vda.manufacturer OR doc ->> 'serialNumber' <> vda.serial_number)
    THEN
        problem := 'vehicle_id_mismatch';
        detail := left(format('payload names %s/%s', doc ->> 'manufacturer', doc ->> 'serialNumber'), 200);
    END IF;
    IF problem IS NULL AND subtopic = 'state' AND ingest.vda5050_epoch_ms(doc ->> 'timestamp')
                                                  NOT BETWEEN 946684800000 AND 4102444800000 THEN
        problem := 'ts_out_of_range'; detail := left(doc ->> 'timestamp', 40);
    END IF;
    problem := COALESCE(problem, ingest.vehicle_problem(p_clientid));
    IF problem IS NOT NULL THEN
        PERFORM ingest.reject(p_clientid, p_topic, received, problem, detail, raw, s.rejected_payload_cap);
        RETURN;
    END IF;

    IF subtopic = 'state' THEN
        PERFORM ingest.vda5050_apply_state(p_clientid, p_topic, received, doc, raw, vda, s);
    ELSIF subtopic = 'connection' THEN
        -- ONLINE / OFFLINE / CONNECTIONBROKEN mean what they mean in our protocol: the same handler decides
        INSERT INTO ingest.connection_inbox (clientid, topic, payload_b64, received_at_ms)
        VALUES (p_clientid, 'fleet/v1/' || p_clientid || '/connection',
                encode(convert_to(jsonb_build_object(
                    'v', 1, 'msg_id', format('vda-%s-%s', doc ->> 'headerId', doc ->> 'timestamp'),
                    'seq', doc -> 'headerId', 'ts', LEAST(ingest.vda5050_epoch_ms(doc ->> 'timestamp'),
                                                          p_received_ms),
                    'data', jsonb_build_object('state', doc ->> 'connectionState'))::text, 'UTF8'), 'base64'),
                p_received_ms);
    ELSE
        PERFORM ingest.vda5050_apply_factsheet(p_clientid, p_topic, received, doc, raw, s);
    END IF;
    RETURN;
END $$;


-- The broker's INSERT: never raises, never waits (the contract in 10_ingest_common.sql). A vehicle with a parked
-- message parks its later ones behind it.
CREATE OR REPLACE FUNCTION ingest.vda5050_inbox_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '100ms' AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM ingest.parked p WHERE p.clientid = NEW.clientid) THEN
        PERFORM ingest.park('vda5050', NEW.clientid, to_jsonb(NEW), 'behind');
        RETURN NEW;
    END IF;
    BEGIN
        PERFORM ingest.apply_vda5050(NEW.clientid, NEW.topic, NEW.payload_b64, NEW.received_at_ms);
    EXCEPTION WHEN OTHERS OR query_canceled OR assert_failure THEN
        PERFORM ingest.park('vda5050', NEW.clientid, to_jsonb(NEW), SQLSTATE || ': ' || SQLERRM);
    END;
    RETURN NEW;
END $$;

CREATE OR REPLACE VIEW ingest.vda5050_inbox AS
    SELECT NULL::text AS clientid, NULL::text AS topic, NULL::text AS payload_b64, NULL::bigint AS received_at_ms
     WHERE false;
CREATE OR REPLACE TRIGGER vda5050_inbox_insert INSTEAD OF INSERT ON ingest.vda5050_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.vda5050_inbox_insert();

GRANT INSERT ON ingest.vda5050_inbox TO fleet_ingest;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ingest FROM PUBLIC;
