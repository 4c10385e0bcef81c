-- 100_telemetry_queue.sql — telemetry is queued by the broker and applied in sets by the worker.
--
-- Until now ingest.telemetry_inbox was a view whose INSTEAD OF trigger applied each message as the broker inserted
-- it: one trigger call, one subtransaction, one UPDATE and one INSERT per message, about 2.6 times what a plain
-- INSERT of the same rows costs (bench/sql_ingest.py). Telemetry is most of what vehicles send (1 Hz each), and
-- nothing about it has to happen inside the broker's transaction. So the inbox is now a plain append-only table:
-- the broker's INSERT cannot conflict (no unique key but the generated id), cannot fail on data (text and bigint
-- columns, no checks), fires no trigger and waits on no row lock. The worker (`python -m api.worker`) takes it in
-- sets with ingest.drain_telemetry() (sql/code/20_telemetry.sql): one INSERT into telemetry and one UPDATE of
-- vehicle_state per set, and any message the set path does not take — a dead letter, a batch, a skewed clock, a
-- vehicle with parked messages, or the whole set if a set statement fails — through the per-message path that
-- the trigger used to run, which never raises and parks what it cannot apply (docs/ARCHITECTURE.md, "Telemetry:
-- a queue applied in sets"). The other inboxes keep their triggers: they are rare, ordered, and their effects
-- (a mission's state) should be visible when the broker's INSERT commits.
--
-- The broker's statement (emqx/emqx.conf) is unchanged: the table has the view's four columns, plus the id.

-- CASCADE: a database of the pre-split layout (docs/ARCHITECTURE.md, "SQL functions as code") still has the other
-- inbox views defined on this one. They are code, like their triggers and grants (sql/code/21_status.sql …
-- 26_vda5050.sql), and are created again by this same migration run, right after the migrations.
DROP VIEW IF EXISTS ingest.telemetry_inbox CASCADE;    -- and its INSTEAD OF trigger with it
DROP FUNCTION IF EXISTS ingest.telemetry_inbox_insert();

CREATE TABLE ingest.telemetry_inbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- arrival order; the drain's order
    clientid        text,
    topic           text,
    payload_b64     text,
    received_at_ms  bigint
) WITH (
    -- rows live for milliseconds: vacuum after a fixed number of dead ones, not a fraction of a table that is
    -- nearly always empty, so its pages are reused instead of growing under a steady stream
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000
);
COMMENT ON TABLE ingest.telemetry_inbox IS
    'telemetry as the broker received it, until the worker applies it (ingest.drain_telemetry)';

-- The broker's role may append and nothing else: not read, change or delete what is queued.
GRANT INSERT (clientid, topic, payload_b64, received_at_ms) ON ingest.telemetry_inbox TO fleet_ingest;
