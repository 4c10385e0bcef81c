-- 40_maintenance.sql — telemetry partitions, retention, liveness and ingest metrics.
--
-- telemetry (sql/001_core.sql) is range-partitioned by device time into UTC days named telemetry_pYYYYMMDD.
-- fleet_maintenance() — run about once a minute by the api dispatcher's leader, and at the end of this file on a
-- new database — creates the partitions of yesterday, today and ingest.settings.partitions_ahead days ahead;
-- drops whole partitions past telemetry_retention; moves rows that the default partition (the safety net for
-- device times outside every partition, sql/004_maintenance.sql) caught back into real partitions; prunes
-- vehicle_status and rejected_messages by age; and marks vehicles offline that have been silent longer than
-- liveness_timeout (a lost Last Will must not leave a vehicle online).
-- Indexes: BRIN on ts (001) and the primary key (vehicle_id, ts, msg_id), which serves "a vehicle's points,
-- newest first" by a backward scan. vehicle_status stays one table: it is low-rate (on change and periodically)
-- and is pruned by age here in bounded steps instead of by partition.
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

CREATE OR REPLACE FUNCTION ingest.telemetry_partition_name(p_day date) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'telemetry_p' || to_char(p_day, 'YYYYMMDD') $$;

-- Create the partition of one UTC day unless it exists; rows the default partition holds for that day move in.
-- Returns the number of rows moved, or NULL when the partition already existed.
CREATE OR REPLACE FUNCTION ingest.ensure_telemetry_partition(p_day date) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    name text := ingest.telemetry_partition_name(p_day);
    lo timestamptz := p_day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (p_day + 1)::timestamp AT TIME ZONE 'UTC';
    moved bigint;
BEGIN
    IF to_regclass('public.' || quote_ident(name)) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('CREATE TABLE public.%I (LIKE public.telemetry INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    -- the CHECK lets ATTACH skip its validation scan
    EXECUTE format('ALTER TABLE public.%I ADD CONSTRAINT %I CHECK (ts >= %L AND ts < %L)',
                   name, name || '_range', lo, hi);
    EXECUTE format('WITH moved AS (DELETE FROM public.telemetry_default WHERE ts >= $1 AND ts < $2 RETURNING *) '
                   'INSERT INTO public.%I SELECT * FROM moved', name) USING lo, hi;
    GET DIAGNOSTICS moved = ROW_COUNT;
    EXECUTE format('ALTER TABLE public.telemetry ATTACH PARTITION public.%I FOR VALUES FROM (%L) TO (%L)',
                   name, lo, hi);
    EXECUTE format('ALTER TABLE public.%I DROP CONSTRAINT %I', name, name || '_range');
    RETURN moved;
END $$;

CREATE OR REPLACE FUNCTION public.fleet_maintenance() RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s ingest.settings;
    today date := (now() AT TIME ZONE 'UTC')::date;
    cutoff timestamptz;
    day date;
    part record;
    moved bigint;
    created text[] := '{}';
    dropped text[] := '{}';
    moved_total bigint := 0;
    default_pruned bigint;
    status_pruned bigint;
    rejected_pruned bigint;
    offline text[];
BEGIN
    -- one maintainer at a time (several api replicas, or a manual run)
    IF NOT pg_try_advisory_xact_lock(hashtext('fleet_maintenance')) THEN
        RETURN jsonb_build_object('skipped', 'another maintenance run is in progress');
    END IF;
    SELECT * INTO s FROM ingest.settings;
    cutoff := now() - s.telemetry_retention;

    -- partitions: yesterday .. today + ahead, plus any retained day the safety net has rows for
    FOR day IN
        SELECT today - 1 + i FROM generate_series(0, s.partitions_ahead + 1) AS i
        UNION
        SELECT DISTINCT (t.ts AT TIME ZONE 'UTC')::date FROM public.telemetry_default t
         WHERE t.ts >= cutoff AND t.ts < now() + interval '2 days'
        ORDER BY 1
    LOOP
        moved := ingest.ensure_telemetry_partition(day);
        IF moved IS NOT NULL THEN
            created := created || ingest.telemetry_partition_name(day);
            moved_total := moved_total + moved;
        END IF;
    END LOOP;

    -- retention: whole partitions whose day ended before the cutoff
    FOR part IN
        SELECT c.relname, to_date(substr(c.relname, 12), 'YYYYMMDD') AS day
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'public.telemetry'::regclass AND c.relname ~ '^telemetry_p[0-9]{8}$'
         ORDER BY 2
    LOOP
        IF ((part.day + 1)::timestamp AT TIME ZONE 'UTC') <= cutoff THEN
            EXECUTE format('DROP TABLE public.%I', part.relname);
            dropped := dropped || part.relname::text;
        END IF;
    END LOOP;
    DELETE FROM public.telemetry_default WHERE ts < cutoff;
    GET DIAGNOSTICS default_pruned = ROW_COUNT;

    -- low-rate history: by age, in bounded steps so one run never holds locks for long
    DELETE FROM public.vehicle_status WHERE id IN (
        SELECT id FROM public.vehicle_status WHERE ts < now() - s.status_retention LIMIT 50000);
    GET DIAGNOSTICS status_pruned = ROW_COUNT;
    DELETE FROM public.rejected_messages WHERE id IN (
        SELECT id FROM public.rejected_messages WHERE received_at < now() - s.rejected_retention LIMIT 50000);
    GET DIAGNOSTICS rejected_pruned = ROW_COUNT;

    -- liveness: online but silent (no message, no connect) for longer than the timeout
    WITH silent AS (
        UPDATE public.vehicle_state st SET
            online = false, disconnected_at = now(), disconnect_reason = 'liveness_timeout', updated_at = now()
         WHERE st.online
           AND GREATEST(COALESCE(st.last_seen_at, '-infinity'), COALESCE(st.connected_at, '-infinity'))
               < now() - s.liveness_timeout
        RETURNING st.vehicle_id)
    SELECT COALESCE(array_agg(vehicle_id ORDER BY vehicle_id), '{}') INTO offline FROM silent;

    RETURN jsonb_build_object(
        'partitions_created', to_jsonb(created), 'partitions_dropped', to_jsonb(dropped),
        'rows_moved_from_default', moved_total, 'default_rows_pruned', default_pruned,
        'status_rows_pruned', status_pruned, 'rejected_rows_pruned', rejected_pruned,
        'marked_offline', to_jsonb(offline));
END $$;

-- What ingest did, for dashboards and the api's /metrics: rejections by reason and telemetry rows stored,
-- both since p_since. Computed from the tables themselves, so the hot path pays nothing for it.
CREATE OR REPLACE FUNCTION public.ingest_metrics(p_since interval DEFAULT interval '1 hour')
RETURNS TABLE (kind text, name text, n bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'rejected', r.reason, count(*) FROM public.rejected_messages r
     WHERE r.received_at >= now() - p_since GROUP BY r.reason
    UNION ALL
    SELECT 'stored', 'telemetry', count(*) FROM public.telemetry t WHERE t.ts >= now() - p_since
    UNION ALL
    SELECT 'stored', 'status', count(*) FROM public.vehicle_status v WHERE v.ts >= now() - p_since
    UNION ALL
    SELECT 'vehicles', 'online', count(*) FROM public.vehicle_state st WHERE st.online
$$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ingest FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.fleet_maintenance(), public.ingest_metrics(interval) FROM PUBLIC;

-- A new database gets its partitions now rather than at the dispatcher's first run. Where today's partition
-- exists, maintenance is the dispatcher's: a run here would hold its locks until the whole code step commits.
SELECT public.fleet_maintenance()
 WHERE to_regclass('public.' || ingest.telemetry_partition_name((now() AT TIME ZONE 'UTC')::date)) IS NULL;
