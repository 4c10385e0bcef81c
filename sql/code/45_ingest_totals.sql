-- 45_ingest_totals.sql — keeps ingest_rejected_totals (sql/044_ingest_rejected_totals.sql) counting every dead
-- letter as it is written: one upsert per reason per INSERT statement, so a set of rejects costs one row update
-- each, not one per message. Pruning rejected_messages never lowers them.
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times. After the inbox files: it locks rejected_messages
-- (docs in 60_vehicle_state.sql).

CREATE OR REPLACE FUNCTION public.count_rejected() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO public.ingest_rejected_totals AS t (reason, total)
    SELECT n.reason, count(*) FROM new_rows n GROUP BY n.reason ORDER BY n.reason
    ON CONFLICT (reason) DO UPDATE SET total = t.total + EXCLUDED.total;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER rejected_messages_count AFTER INSERT ON public.rejected_messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.count_rejected();

REVOKE EXECUTE ON FUNCTION public.count_rejected() FROM PUBLIC;
