-- 044_ingest_rejected_totals.sql — dead letters counted as they happen, by reason.
--
-- The metric fleet_ingest_rejected_total is a counter: it must never go down. Counting the rows of
-- rejected_messages does when retention prunes them (and scans the whole table at every scrape). These totals only
-- grow: a trigger on rejected_messages adds each statement's rows (sql/code/45_ingest_totals.sql); pruning leaves
-- them alone. They start from the rows kept today.
CREATE TABLE ingest_rejected_totals (
    reason  text PRIMARY KEY,
    total   bigint NOT NULL CHECK (total >= 0)
);
INSERT INTO ingest_rejected_totals (reason, total)
    SELECT reason, count(*) FROM rejected_messages GROUP BY reason;
