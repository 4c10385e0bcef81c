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
CREATE OR REPLACE FUNCTION ingest.connection_inbox_insert() RETURNS trigger
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

-- Its inbox: exactly the columns the broker's action inserts (emqx/emqx.conf), and its trigger
CREATE OR REPLACE VIEW ingest.connection_inbox AS
    SELECT NULL::text AS clientid, NULL::text AS topic, NULL::text AS payload_b64, NULL::bigint AS received_at_ms
     WHERE false;
CREATE OR REPLACE TRIGGER connection_inbox_insert INSTEAD OF INSERT ON ingest.connection_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.connection_inbox_insert();

-- ---------------------------------------------------------------------------------------------------
-- The broker's view: client.connected / client.disconnected
-- ---------------------------------------------------------------------------------------------------
-- client.connected / client.disconnected from the broker. Only role 'vehicle' has presence (an enrolling
-- client is not the vehicle yet). connected_at identifies the connection: a disconnect of an older connection
-- (a takeover's late event, docs/EMQX.md §9 pitfall 11) must not take the reconnected vehicle offline, and a connect
-- processed after its own disconnect must not bring it back.
CREATE OR REPLACE FUNCTION ingest.presence_inbox_insert() RETURNS trigger
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

-- Its inbox: exactly the columns the broker's action inserts (emqx/emqx.conf), and its trigger
CREATE OR REPLACE VIEW ingest.presence_inbox AS
    SELECT NULL::text AS clientid, NULL::text AS event, NULL::text AS reason, NULL::bigint AS at_ms,
           NULL::bigint AS connected_at_ms, NULL::text AS role
     WHERE false;
CREATE OR REPLACE TRIGGER presence_inbox_insert INSTEAD OF INSERT ON ingest.presence_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.presence_inbox_insert();

-- fleet_ingest may INSERT into the inboxes and do nothing else; no function in schema ingest is callable by PUBLIC.
GRANT INSERT ON ingest.connection_inbox, ingest.presence_inbox TO fleet_ingest;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ingest FROM PUBLIC;
