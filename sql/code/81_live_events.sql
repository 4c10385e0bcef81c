-- 81_live_events.sql — the notifications the console's event stream is built from (api/live.py), besides
-- fleet_alarm (80_alarms.sql):
--   fleet_mission_event {"id"}           every row appended to mission_events (transitions and progress)
--   fleet_vehicle_state {"vehicle_ids"}  the vehicles whose vehicle_state or vehicles row changed, ≤ 100 ids each
-- Payloads stay far below PostgreSQL's limit of 8000 bytes; the stream reads the rows they name.
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times. Triggers on tables come after the inbox files
-- (see 60_vehicle_state.sql).

CREATE OR REPLACE FUNCTION public.mission_event_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('fleet_mission_event', json_build_object('id', NEW.id)::text);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER mission_events_notify AFTER INSERT ON mission_events
    FOR EACH ROW EXECUTE FUNCTION public.mission_event_notify();

-- Every change of a vehicle_state row (ingest, presence, the liveness sweep, a new vehicle) and of what the console
-- shows from vehicles (name, status): the stream keeps a copy of every vehicle's row (api/live.py), so it must hear
-- of each. The ingest processor also names the vehicles of each set it stores; the stream reads each id once.
CREATE OR REPLACE FUNCTION public.vehicle_state_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('fleet_vehicle_state', json_build_object('vehicle_ids', array_agg(v ORDER BY v))::text)
       FROM (SELECT v, (row_number() OVER (ORDER BY v) - 1) / 100 AS chunk
               FROM (SELECT DISTINCT n.vehicle_id AS v FROM changed n) d) c
      GROUP BY chunk;
    RETURN NULL;
END $$;
-- One exception: telemetry (ingest.ingest_telemetry, 20_telemetry.sql) updates one row per statement at 1 Hz per
-- vehicle, and this statement trigger (transition table, a function call, a query) cost about a fifth of its
-- whole path (bench/sql_ingest.py). That function runs with fleet.caller_notifies_vehicle_state = 'on' (its own SET
-- clause, so it is back to off when the function returns or fails) and sends the same notification itself; the
-- WHEN below is evaluated once per statement and is nearly free.
CREATE OR REPLACE TRIGGER vehicle_state_notify AFTER UPDATE ON vehicle_state
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    WHEN (current_setting('fleet.caller_notifies_vehicle_state', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION public.vehicle_state_notify();
CREATE OR REPLACE TRIGGER vehicle_state_notify_new AFTER INSERT ON vehicle_state
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION public.vehicle_state_notify();

CREATE OR REPLACE FUNCTION public.vehicles_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('fleet_vehicle_state', json_build_object('vehicle_ids', array_agg(v ORDER BY v))::text)
       FROM (SELECT v, (row_number() OVER (ORDER BY v) - 1) / 100 AS chunk
               FROM (SELECT DISTINCT n.id AS v FROM changed n) d) c
      GROUP BY chunk;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER vehicles_notify AFTER UPDATE ON vehicles
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION public.vehicles_notify();
