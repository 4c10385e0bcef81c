-- 23_connection.sql — presence: whether a vehicle is online. Two sources move vehicle_state.online and are kept
-- together because each must not undo the other's newer news: the vehicle's retained message on
-- fleet/v1/{vid}/connection (ONLINE, OFFLINE, or CONNECTIONBROKEN as its Last Will; docs/PROTOCOL.md, Connection)
-- and the broker's client.connected / client.disconnected events. A vehicle that comes online is announced with
-- NOTIFY fleet_vehicle_online, so the dispatcher sends its queued missions.
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

-- ---------------------------------------------------------------------------------------------------
-- The vehicle's own view: its retained connection message
-- ---------------------------------------------------------------------------------------------------
-- The inbox: exactly the columns the broker's action inserts (emqx/emqx.conf)
CREATE OR REPLACE VIEW ingest.connection_inbox AS
    SELECT NULL::text AS clientid, NULL::text AS topic, NULL::text AS payload_b64, NULL::bigint AS received_at_ms
     WHERE false;

-- One inbox row. Raises whatever goes wrong beyond the message's content; the trigger below (and
-- ingest.retry_parked) catch it and park the row.
CREATE OR REPLACE FUNCTION ingest.apply_connection(p_clientid text, p_topic text, p_b64 text, p_received_ms bigint)
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
    e record;
    new_state text;
    was_online boolean;
    is_online boolean;
BEGIN
    s := ingest.current_settings();
    problem := ingest.topic_problem(p_clientid, p_topic, 'connection');
    IF problem IS NULL THEN
        IF p_b64 IS NULL OR p_b64 = '' THEN
            RETURN;  -- clearing the retained message is not a state
        END IF;
        dec := ingest.decode_payload(p_b64, s.max_payload_bytes);
        doc := dec.doc;
        raw := dec.raw;
        problem := dec.reason;
        detail := dec.detail;
    ELSE
        raw := ingest.decode_or_null(p_b64);
    END IF;
    IF problem IS NULL THEN
        e := ingest.check_envelope(doc, p_clientid, received);
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
    problem := COALESCE(problem, ingest.vehicle_problem(p_clientid));
    IF problem IS NOT NULL THEN
        PERFORM ingest.reject(p_clientid, p_topic, received, problem, detail, raw, s.rejected_payload_cap);
        RETURN;
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
     WHERE st.vehicle_id = p_clientid
       AND (st.connection_state_at IS NULL OR st.connection_state_at <= received)
    RETURNING WITH (OLD AS o, NEW AS n) o.online, n.online INTO was_online, is_online;
    IF is_online AND NOT was_online THEN
        PERFORM ingest.notify_online(p_clientid);
    END IF;
    RETURN;
END $$;

-- The broker's INSERT: never raises, never waits (the contract in 10_ingest_common.sql).
-- A vehicle with a parked message parks its later ones behind it, so they are applied in order.
CREATE OR REPLACE FUNCTION ingest.connection_inbox_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '100ms' AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM ingest.parked p WHERE p.clientid = NEW.clientid) THEN
        PERFORM ingest.park('connection', NEW.clientid, to_jsonb(NEW), 'behind');
        RETURN NEW;
    END IF;
    BEGIN
        PERFORM ingest.apply_connection(NEW.clientid, NEW.topic, NEW.payload_b64, NEW.received_at_ms);
    EXCEPTION WHEN OTHERS OR query_canceled OR assert_failure THEN
        PERFORM ingest.park('connection', NEW.clientid, to_jsonb(NEW), SQLSTATE || ': ' || SQLERRM);
    END;
    RETURN NEW;
END $$;

-- Its inbox's trigger
CREATE OR REPLACE TRIGGER connection_inbox_insert INSTEAD OF INSERT ON ingest.connection_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.connection_inbox_insert();

-- ---------------------------------------------------------------------------------------------------
-- The broker's view: client.connected / client.disconnected
-- ---------------------------------------------------------------------------------------------------
-- client.connected / client.disconnected from the broker. Only role 'vehicle' has presence (an enrolling
-- client is not the vehicle yet). connected_at identifies the connection: a disconnect of an older connection
-- (a takeover's late event, docs/EMQX.md §9 pitfall 11) must not take the reconnected vehicle offline, and a connect
-- processed after its own disconnect must not bring it back.
-- The inbox: exactly the columns the broker's action inserts (emqx/emqx.conf)
CREATE OR REPLACE VIEW ingest.presence_inbox AS
    SELECT NULL::text AS clientid, NULL::text AS event, NULL::text AS reason, NULL::bigint AS at_ms,
           NULL::bigint AS connected_at_ms, NULL::text AS role
     WHERE false;

-- One inbox row. Raises whatever goes wrong beyond the message's content; the trigger below (and
-- ingest.retry_parked) catch it and park the row.
CREATE OR REPLACE FUNCTION ingest.apply_presence(p_clientid text, p_event text, p_reason text, p_at_ms bigint,
                                                 p_connected_at_ms bigint, p_role text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    event_at timestamptz := ingest.broker_time(p_at_ms);
    conn_at timestamptz := CASE WHEN p_connected_at_ms IS NOT NULL THEN ingest.broker_time(p_connected_at_ms) END;
BEGIN
    IF p_role IS DISTINCT FROM 'vehicle' THEN
        RETURN;
    END IF;
    IF p_event = 'client.connected' THEN
        conn_at := COALESCE(conn_at, event_at);
        UPDATE public.vehicle_state st SET
            online = true, connected_at = conn_at, disconnect_reason = NULL,
            last_seen_at = GREATEST(st.last_seen_at, event_at), updated_at = now()
         WHERE st.vehicle_id = p_clientid
           AND (st.connected_at IS NULL OR conn_at >= st.connected_at)
           AND (st.disconnected_connected_at IS NULL OR conn_at > st.disconnected_connected_at);
        IF FOUND THEN  -- a new connection: the dispatcher may have missions queued for it
            PERFORM ingest.notify_online(p_clientid);
        END IF;
    ELSIF p_event = 'client.disconnected' THEN
        UPDATE public.vehicle_state st SET
            online = false, disconnected_at = event_at, disconnect_reason = left(p_reason, 100),
            disconnected_connected_at = COALESCE(conn_at, st.connected_at), updated_at = now()
         WHERE st.vehicle_id = p_clientid
           AND (st.connected_at IS NULL OR COALESCE(conn_at, event_at) >= st.connected_at);
    ELSE
        PERFORM ingest.reject(p_clientid, NULL, event_at, 'unknown_event', left(p_event, 100), NULL, 0);
        RETURN;
    END IF;
    IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM public.vehicles WHERE id = p_clientid) THEN
        PERFORM ingest.reject(p_clientid, NULL, event_at, 'unknown_vehicle', p_event, NULL, 0);
    END IF;
    RETURN;
END $$;

-- The broker's INSERT: never raises, never waits (the contract in 10_ingest_common.sql).
-- A vehicle with a parked message parks its later ones behind it, so they are applied in order.
CREATE OR REPLACE FUNCTION ingest.presence_inbox_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '100ms' AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM ingest.parked p WHERE p.clientid = NEW.clientid) THEN
        PERFORM ingest.park('presence', NEW.clientid, to_jsonb(NEW), 'behind');
        RETURN NEW;
    END IF;
    BEGIN
        PERFORM ingest.apply_presence(NEW.clientid, NEW.event, NEW.reason, NEW.at_ms, NEW.connected_at_ms,
                                      NEW.role);
    EXCEPTION WHEN OTHERS OR query_canceled OR assert_failure THEN
        PERFORM ingest.park('presence', NEW.clientid, to_jsonb(NEW), SQLSTATE || ': ' || SQLERRM);
    END;
    RETURN NEW;
END $$;

-- Its inbox's trigger
CREATE OR REPLACE TRIGGER presence_inbox_insert INSTEAD OF INSERT ON ingest.presence_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.presence_inbox_insert();

-- fleet_ingest may INSERT into the inboxes and do nothing else; no function in schema ingest is callable by PUBLIC.
GRANT INSERT ON ingest.connection_inbox, ingest.presence_inbox TO fleet_ingest;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ingest FROM PUBLIC;
