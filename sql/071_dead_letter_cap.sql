-- 071_dead_letter_cap.sql — at most so many dead letters per client per minute; the rest are counted, not stored.
--
-- A vehicle (or an enrolling client) that sends thousands of bad messages a second wrote a dead-letter row for each,
-- kept 30 days with up to rejected_payload_cap bytes of payload. ingest.reject (sql/code/10_ingest_common.sql) now
-- stores at most max_rejected_per_minute rows per client id and broker minute and only counts the others, by reason,
-- in ingest_rejected_totals.not_stored (total still counts every reject, stored or not). NULL: no cap.
ALTER TABLE ingest.settings
    ADD COLUMN max_rejected_per_minute integer DEFAULT 60 CHECK (max_rejected_per_minute >= 0);

ALTER TABLE ingest_rejected_totals
    ADD COLUMN not_stored bigint NOT NULL DEFAULT 0 CHECK (not_stored >= 0);
