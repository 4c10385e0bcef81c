-- 043_append_only_history.sql — the mission timeline and the audit log are append-only for the application role.
--
-- The application role owns every table (the migrations run as it), and an owner's privileges are ordinary
-- grants it holds: revoking UPDATE, DELETE and TRUNCATE takes them from the api, authsvc, the worker and every
-- SECURITY DEFINER function alike. The triggers in sql/code/35_append_only.sql refuse the same statements even if
-- a grant came back. What neither can stop is the owner changing the table itself (ALTER, GRANT): that takes a
-- separate owner role, which is an operations choice (docs/OPERATIONS.md, Append-only history).
REVOKE UPDATE, DELETE, TRUNCATE ON mission_events, audit_log FROM CURRENT_USER;

-- The audit log is read by actor, action, target and time (GET /api/v1/audit).
CREATE INDEX audit_log_actor ON audit_log (actor_id, at);
CREATE INDEX audit_log_action ON audit_log (action, at);
