-- 004_maintenance.sql — the safety net of the partitioned telemetry table.
--
-- telemetry (001) is range-partitioned by device time into UTC days. The default partition catches rows whose
-- device time falls outside every daily partition (a skewed clock, a day not created yet);
-- fleet_maintenance() (sql/code/40_maintenance.sql) creates the daily partitions, moves such rows into them and
-- drops days past their retention.
--
-- This text replaces one that also held the maintenance functions and ran them once:
-- supersedes sha256: b0755a562499984de8e300e60cf4a9a8107fde14e0f450c702001f5668a66186

CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;
