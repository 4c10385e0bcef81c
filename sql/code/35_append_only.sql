-- 35_append_only.sql — mission_events and audit_log refuse UPDATE, DELETE and TRUNCATE, whoever asks.
--
-- The grants are already gone (sql/043_append_only_history.sql); these triggers hold even if one came back.
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times. After the inbox files: it locks mission_events
-- (docs in 60_vehicle_state.sql).

CREATE OR REPLACE FUNCTION public.refuse_history_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE TRIGGER mission_events_append_only BEFORE UPDATE OR DELETE ON public.mission_events
    FOR EACH ROW EXECUTE FUNCTION public.refuse_history_change();
CREATE OR REPLACE TRIGGER mission_events_no_truncate BEFORE TRUNCATE ON public.mission_events
    FOR EACH STATEMENT EXECUTE FUNCTION public.refuse_history_change();
CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON public.audit_log
    FOR EACH ROW EXECUTE FUNCTION public.refuse_history_change();
CREATE OR REPLACE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON public.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION public.refuse_history_change();

REVOKE EXECUTE ON FUNCTION public.refuse_history_change() FROM PUBLIC;
