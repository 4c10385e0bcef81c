-- 25_ingest_parked.sql — re-applying what the inbox triggers parked (the contract in 10_ingest_common.sql; the table
-- is in sql/045_ingest_parked.sql). The worker (`python -m api.worker`) calls ingest.retry_parked() when it is told that
-- something was parked (NOTIFY fleet_ingest_parked) and on every tick while anything is.
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

-- One parked row through the same function the trigger calls.
CREATE OR REPLACE FUNCTION ingest.apply_parked(p_inbox text, m jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    CASE p_inbox
        WHEN 'telemetry' THEN
            PERFORM ingest.apply_telemetry(m ->> 'clientid', m ->> 'topic', m ->> 'payload_b64',
                                           (m ->> 'received_at_ms')::bigint);
        WHEN 'status' THEN
            PERFORM ingest.apply_status(m ->> 'clientid', m ->> 'topic', m ->> 'payload_b64',
                                        (m ->> 'received_at_ms')::bigint);
        WHEN 'mission' THEN
            PERFORM ingest.apply_mission(m ->> 'clientid', m ->> 'topic', m ->> 'payload_b64',
                                         (m ->> 'received_at_ms')::bigint);
        WHEN 'connection' THEN
            PERFORM ingest.apply_connection(m ->> 'clientid', m ->> 'topic', m ->> 'payload_b64',
                                            (m ->> 'received_at_ms')::bigint);
        WHEN 'presence' THEN
            PERFORM ingest.apply_presence(m ->> 'clientid', m ->> 'event', m ->> 'reason', (m ->> 'at_ms')::bigint,
                                          (m ->> 'connected_at_ms')::bigint, m ->> 'role');
        WHEN 'vda5050' THEN
            PERFORM ingest.apply_vda5050(m ->> 'clientid', m ->> 'topic', m ->> 'payload_b64',
                                         (m ->> 'received_at_ms')::bigint);
        WHEN 'authz_denied' THEN
            PERFORM ingest.apply_authz_denied(m ->> 'clientid', m ->> 'topic', m ->> 'action',
                                              (m ->> 'at_ms')::bigint);
    END CASE;  -- an unknown inbox raises case_not_found: retried, then dead-lettered like any failure
END $$;

-- Re-apply up to p_limit parked rows that are due, oldest first, each in its own subtransaction. Where order
-- matters — mission events (a mission moves by the order of its events), and with them status, connection,
-- presence and a VDA 5050 state (which carries mission progress) — a row whose vehicle has an earlier such row still parked (failed again this round, not due yet, or
-- being retried by another worker: SKIP LOCKED) waits, so they are applied in the order they arrived. Telemetry
-- does not wait: its latest state is ordered by (device time, seq), and a vehicle's backlog of points is not held
-- up behind one bad point. A failure backs off exponentially (250 ms, doubling, at most park_backoff_max); after
-- park_max_attempts the row is dead-lettered as ingest_failed with the last error and its whole payload. Returns
-- what it did, for the worker's log and metrics.
CREATE OR REPLACE FUNCTION ingest.retry_parked(p_limit integer DEFAULT 500, OUT applied integer,
                                               OUT failed integer, OUT dead_lettered integer, OUT waiting integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '100ms' AS $$
DECLARE
    s ingest.settings := ingest.current_settings();
    r ingest.parked;
    failed_table text;
    error text;
BEGIN
    applied := 0; failed := 0; dead_lettered := 0; waiting := 0;
    FOR r IN SELECT * FROM ingest.parked p WHERE p.next_attempt_at <= now()
              ORDER BY p.id LIMIT p_limit FOR UPDATE SKIP LOCKED LOOP
        IF r.inbox IN ('mission', 'status', 'connection', 'presence', 'vda5050') AND r.clientid IS NOT NULL
           AND EXISTS (SELECT 1 FROM ingest.parked q
                        WHERE q.clientid = r.clientid AND q.id < r.id
                          AND q.inbox IN ('mission', 'status', 'connection', 'presence', 'vda5050')) THEN
            waiting := waiting + 1;
            CONTINUE;
        END IF;
        BEGIN
            PERFORM ingest.apply_parked(r.inbox, r.message);
            DELETE FROM ingest.parked WHERE id = r.id;
            applied := applied + 1;
        EXCEPTION WHEN OTHERS OR query_canceled OR assert_failure THEN
            GET STACKED DIAGNOSTICS failed_table = TABLE_NAME;
            error := left(SQLSTATE || ': ' || SQLERRM, 400);
            IF ingest.is_stored_point(r.inbox, SQLSTATE, failed_table) THEN
                DELETE FROM ingest.parked WHERE id = r.id;
                applied := applied + 1;
            ELSIF r.attempts + 1 >= s.park_max_attempts THEN
                PERFORM ingest.reject(r.clientid, r.message ->> 'topic',
                                      ingest.broker_time(COALESCE(r.message ->> 'received_at_ms',
                                                                  r.message ->> 'at_ms')::bigint),
                                      'ingest_failed', format('%s: %s attempts; last error %s', r.inbox,
                                                              r.attempts + 1, error),
                                      ingest.decode_or_null(r.message ->> 'payload_b64'),
                                      GREATEST(s.max_payload_bytes, s.rejected_payload_cap));
                DELETE FROM ingest.parked WHERE id = r.id;
                dead_lettered := dead_lettered + 1;
            ELSE
                UPDATE ingest.parked SET
                    attempts = r.attempts + 1,
                    last_error = error,
                    next_attempt_at = now() + LEAST(s.park_backoff_max,
                                                    interval '250 milliseconds' * power(2, LEAST(r.attempts, 20)))
                 WHERE id = r.id;
                failed := failed + 1;
            END IF;
        END;
    END LOOP;
END $$;

-- What is parked now, for the worker's metrics and the runbook (docs/OPERATIONS.md).
CREATE OR REPLACE FUNCTION ingest.parked_summary(OUT parked bigint, OUT oldest_s double precision,
                                                 OUT max_attempts integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*), COALESCE(extract(epoch FROM now() - min(p.parked_at)), 0)::float8,
           COALESCE(max(p.attempts), 0)
      FROM ingest.parked p
$$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ingest FROM PUBLIC;
