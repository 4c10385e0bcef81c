-- 60_vehicle_state.sql — every vehicle has one vehicle_state row from the moment it exists, and
-- vehicle_state.vehicle_active mirrors vehicles.status, so the hot telemetry path checks and updates one row
-- instead of two (the columns are in sql/001_core.sql and sql/002_ingest.sql).
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.
--
-- Why this file comes after the inbox files: re-creating a trigger locks its table (here `vehicles`, which the
-- status handler updates). Every ingest transaction locks its inbox view first, and the code step locks all the
-- views (20-24) before any table, so the two can never wait for each other in a cycle. Triggers on tables belong
-- in files after the inboxes.

CREATE OR REPLACE FUNCTION ingest.sync_vehicle_state() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO public.vehicle_state (vehicle_id, vehicle_active) VALUES (NEW.id, NEW.status = 'active')
    ON CONFLICT (vehicle_id) DO UPDATE SET vehicle_active = EXCLUDED.vehicle_active;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER vehicles_create_state AFTER INSERT ON vehicles
    FOR EACH ROW EXECUTE FUNCTION ingest.sync_vehicle_state();
CREATE OR REPLACE TRIGGER vehicles_sync_state AFTER UPDATE OF status ON vehicles
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION ingest.sync_vehicle_state();

-- No function in schema ingest is callable by PUBLIC.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ingest FROM PUBLIC;
