-- 045_ingest_parked.sql — where the ingest parks a message it could not apply, so the broker's batch never fails.
--
-- EMQX's pgsql action drops a whole batch (up to batch_size messages) when PostgreSQL reports any error for it, and
-- retries only a lost connection (docs/EMQX.md §5.6a). So the inbox triggers (sql/code/2x_*.sql) never raise and
-- never wait: what they cannot apply now (a row lock held by someone else, a deadlock, a timeout, an unexpected
-- error) is appended here, and the worker (api.worker → ingest.retry_parked(), sql/code/25_ingest_parked.sql)
-- applies it later, in arrival order, or dead-letters it with the last error after park_max_attempts.
--
-- Append-only from the broker's side and nothing its data can violate: no trigger, no unique key but the
-- generated id, the message kept whole as jsonb (the inbox row as the broker sent it).
CREATE TABLE ingest.parked (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parked_at        timestamptz NOT NULL DEFAULT now(),
    inbox            text NOT NULL,                 -- telemetry, status, mission, connection, presence, authz_denied
    clientid         text,
    message          jsonb NOT NULL,                -- the inbox row: to_jsonb(NEW)
    attempts         integer NOT NULL DEFAULT 0,    -- failed re-applications by the worker
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text                           -- SQLSTATE: message, or 'behind' (an earlier one is parked)
);
-- "does this vehicle have a parked message?" on every inbound message; and the worker's scan in arrival order
CREATE INDEX parked_client ON ingest.parked (clientid, id);
COMMENT ON TABLE ingest.parked IS 'inbound messages the ingest could not apply yet; retried by the worker';

ALTER TABLE ingest.settings
    ADD COLUMN park_max_attempts integer NOT NULL DEFAULT 15 CHECK (park_max_attempts BETWEEN 1 AND 1000),
    ADD COLUMN park_backoff_max  interval NOT NULL DEFAULT '60 seconds'
        CHECK (park_backoff_max BETWEEN interval '1 second' AND interval '1 hour');
