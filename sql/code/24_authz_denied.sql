-- 24_authz_denied.sql — the broker's authorization denials: every publish or subscribe the ACL refused is
-- dead-lettered as acl_denied (detail: the action), so a vehicle probing other vehicles' topics is visible.
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

CREATE OR REPLACE FUNCTION ingest.authz_denied_inbox_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM ingest.reject(NEW.clientid, NEW.topic, ingest.broker_time(NEW.at_ms), 'acl_denied',
                          'action=' || COALESCE(NEW.action, '?'), NULL, 0);
    RETURN NEW;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- The inbox: exactly the columns the broker's action inserts (emqx/emqx.conf), and its trigger
-- ---------------------------------------------------------------------------------------------------
CREATE OR REPLACE VIEW ingest.authz_denied_inbox AS
    SELECT NULL::text AS clientid, NULL::text AS topic, NULL::text AS action, NULL::bigint AS at_ms
     WHERE false;
CREATE OR REPLACE TRIGGER authz_denied_inbox_insert INSTEAD OF INSERT ON ingest.authz_denied_inbox
    FOR EACH ROW EXECUTE FUNCTION ingest.authz_denied_inbox_insert();

-- fleet_ingest may INSERT into the inbox and do nothing else; no function in schema ingest is callable by PUBLIC.
GRANT INSERT ON ingest.authz_denied_inbox TO fleet_ingest;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ingest FROM PUBLIC;
