-- 24_authz_denied.sql — the broker's authorization denials: every publish or subscribe the ACL refused is
-- dead-lettered as acl_denied (detail: the action), so a vehicle probing other vehicles' topics is visible.
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

-- The inbox: exactly the columns the broker's action inserts (emqx/emqx.conf)
CREATE OR REPLACE VIEW ingest.authz_denied_inbox AS
    SELECT NULL::text AS clientid, NULL::text AS topic, NULL::text AS action, NULL::bigint AS at_ms
     WHERE false;

-- One inbox row. Raises whatever goes wrong beyond the message's content; the trigger below (and
-- ingest.retry_parked) catch it and park the row.
CREATE OR REPLACE FUNCTION ingest.apply_authz_denied(p_clientid text, p_topic text, p_action text, p_at_ms bigint)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ingest.reject(p_clientid, p_topic, ingest.broker_time(p_at_ms), 'acl_denied',
                          'action=' || COALESCE(p_action, '?'), NULL, 0);
    RETURN;
END $$;

-- The broker's INSERT: never raises, never waits (the contract in 10_ingest_common.sql).
CREATE OR REPLACE FUNCTION ingest.authz_denied_inbox_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '100ms' AS $$
BEGIN
    BEGIN
        PERFORM ingest.apply_authz_denied(NEW.clientid, NEW.topic, NEW.action, NEW.at_ms);
    EXCEPTION WHEN OTHERS OR query_canceled OR assert_failure THEN
        PERFORM ingest.park('authz_denied', NEW.clientid, to_jsonb(NEW), SQLSTATE || ': ' || SQLERRM);
    END;
    RETURN NEW;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- The inbox's trigger
-- ---------------------------------------------------------------------------------------------------
CREATE OR REPLACE TRIGGER authz_denied_inbox_insert INSTEAD OF INSERT ON ingest.authz_denied_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.authz_denied_inbox_insert();

-- fleet_ingest may INSERT into the inbox and do nothing else; no function in schema ingest is callable by PUBLIC.
GRANT INSERT ON ingest.authz_denied_inbox TO fleet_ingest;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ingest FROM PUBLIC;
