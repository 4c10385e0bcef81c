-- 002_ingest.sql — the schema of the ingest path: schema `ingest`, its settings, the state columns it keeps and
-- the row types its parse functions return.
--
-- The ingest code itself — the inbox views the broker INSERTs into, their INSTEAD OF triggers and every function
-- they call — lives in sql/code/ (10_ingest_common.sql and one file per topic), which is re-applied whenever it
-- changes. The row types stay here: they are the interface between those functions, and a type cannot be replaced
-- in place, so changing one is a migration (drop the functions that return it, alter or re-create the type; the
-- code files then create the functions again).
--
-- This text replaces the one that also held the functions; a database that applied an earlier text has the same
-- tables and is accepted, and the runner applies sql/code/ to it:
-- supersedes sha256: 88a1f1809c1eea3b6700cdaa5cb1ec0aa105563d3781593fa45b4604a4ffa289
-- supersedes sha256: 9f6954e21876b85ce9650248c83d910a35cc64a36198a249753783d44afe7146

CREATE SCHEMA ingest;
REVOKE ALL ON SCHEMA ingest FROM PUBLIC;

-- ---------------------------------------------------------------------------------------------------
-- Settings (one row; change with UPDATE ingest.settings SET …)
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE ingest.settings (
    id                    boolean PRIMARY KEY DEFAULT true CHECK (id),
    telemetry_retention   interval NOT NULL DEFAULT '30 days' CHECK (telemetry_retention >= interval '1 day'),
    status_retention      interval NOT NULL DEFAULT '90 days' CHECK (status_retention >= interval '1 day'),
    rejected_retention    interval NOT NULL DEFAULT '30 days' CHECK (rejected_retention >= interval '1 hour'),
    partitions_ahead      integer  NOT NULL DEFAULT 3 CHECK (partitions_ahead BETWEEN 1 AND 60),
    clock_skew_threshold  interval NOT NULL DEFAULT '2 minutes' CHECK (clock_skew_threshold > interval '0'),
    liveness_timeout      interval NOT NULL DEFAULT '120 seconds' CHECK (liveness_timeout >= interval '5 seconds'),
    max_payload_bytes     integer  NOT NULL DEFAULT 262144 CHECK (max_payload_bytes BETWEEN 1024 AND 1048576),
    max_batch_items       integer  NOT NULL DEFAULT 1000 CHECK (max_batch_items BETWEEN 1 AND 100000),
    rejected_payload_cap  integer  NOT NULL DEFAULT 4096 CHECK (rejected_payload_cap BETWEEN 0 AND 1048576)
);
INSERT INTO ingest.settings DEFAULT VALUES;
COMMENT ON TABLE ingest.settings IS 'ingest tunables: retention, partitions, skew threshold, liveness timeout, caps';

-- ---------------------------------------------------------------------------------------------------
-- Columns the ingest path needs beyond 001
-- ---------------------------------------------------------------------------------------------------
ALTER TABLE vehicle_state
    ADD COLUMN connection_state_at        timestamptz,  -- broker receive time of the last connection message
    ADD COLUMN disconnected_connected_at  timestamptz,  -- connected_at of the connection whose end we recorded
    ADD COLUMN clock_skewed               boolean NOT NULL DEFAULT false,
    -- vehicles.status = 'active', kept here by trigger so the hot telemetry path touches one row, not two
    ADD COLUMN vehicle_active             boolean NOT NULL DEFAULT false;

-- Every vehicle has exactly one vehicle_state row from the moment it exists.
INSERT INTO vehicle_state (vehicle_id) SELECT id FROM vehicles ON CONFLICT DO NOTHING;
UPDATE vehicle_state st SET vehicle_active = (v.status = 'active') FROM vehicles v WHERE v.id = st.vehicle_id;

-- ---------------------------------------------------------------------------------------------------
-- Row types of the parse functions (sql/code/10_ingest_common.sql and the topic files)
-- ---------------------------------------------------------------------------------------------------
-- The envelope every vehicle message shares: {"v":1,"msg_id":…,"seq":…,"ts":<ms>,"data":{…}}.
CREATE TYPE ingest.envelope AS (reason text, detail text, msg_id text, seq bigint, ts timestamptz, data jsonb);

-- One telemetry point (sql/code/20_telemetry.sql).
CREATE TYPE ingest.telemetry_point AS (
    reason text, detail text, msg_id text, seq bigint, ts timestamptz,
    lat double precision, lon double precision, heading_deg real, speed_mps real, battery_pct real,
    odometer_m double precision, extra jsonb,
    raw bytea,   -- the decoded payload (for dead-lettering)
    batch jsonb  -- set, with reason 'batch', when the payload is a {"v":1,"batch":[…]} envelope
);

-- One status report (sql/code/21_status.sql).
CREATE TYPE ingest.status_report AS (
    reason text, detail text, msg_id text, seq bigint, ts timestamptz,
    mode text, battery_pct real, charging boolean, estop boolean, errors jsonb, health text, sw_version text,
    config_version integer, config jsonb
);

-- One mission event (sql/code/22_mission.sql).
CREATE TYPE ingest.mission_report AS (
    reason text, detail text, msg_id text, seq bigint, ts timestamptz,
    mission_id uuid, event text, event_detail jsonb
);

-- fleet_ingest reaches the inbox views (sql/code/) through this schema and nothing else in it.
GRANT USAGE ON SCHEMA ingest TO fleet_ingest;
