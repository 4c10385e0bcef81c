-- 001_core.sql — the core entities of the fleet backend (docs/ARCHITECTURE.md).
--
-- Conventions: ids of things people type (fleets, vehicles) are text with a CHECK; everything else has a
-- generated id. Every timestamp is timestamptz (UTC on the wire). Device time and server time are kept
-- apart wherever a vehicle reports something: `ts` is what the device said, `received_at` is when the
-- broker received it.
--
-- Only this header and the comment on telemetry partitions changed since databases applied this file:
-- supersedes sha256: ed3990f5e458b48221f845e194303a9ab5c62e12052ed5b7cb849bb2b5b0f9fc

-- ---------------------------------------------------------------------------------------------------
-- Fleets, operators
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE fleets (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username       text NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$'),
    password_hash  text NOT NULL,                       -- bcrypt
    role           text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    active         boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Non-admin users see only the fleets they are members of.
CREATE TABLE user_fleets (
    user_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    fleet_id  text   NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, fleet_id)
);
CREATE INDEX user_fleets_fleet ON user_fleets (fleet_id);

-- ---------------------------------------------------------------------------------------------------
-- Vehicles and their credentials
-- ---------------------------------------------------------------------------------------------------
-- A vehicle id is also its MQTT client id and username: no '+', '#', '/', never starting with '_'.
CREATE TABLE vehicles (
    id                 text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9-]{0,63}$'),
    fleet_id           text NOT NULL REFERENCES fleets (id),
    name               text,
    model              text,
    status             text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'active', 'revoked', 'decommissioned')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    registered_at      timestamptz,
    revoked_at         timestamptz,
    decommissioned_at  timestamptz,
    desired_config     jsonb NOT NULL DEFAULT '{}'::jsonb,
    desired_config_version integer NOT NULL DEFAULT 0,
    reported_config    jsonb,
    reported_config_version integer,
    metadata           jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX vehicles_fleet ON vehicles (fleet_id);

-- One-time enrollment tokens; only a keyed hash (HMAC-SHA-256) is stored.
CREATE TABLE enrollment_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vehicle_id  text NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_by  text
);
CREATE INDEX enrollment_tokens_vehicle ON enrollment_tokens (vehicle_id);

-- Device secrets (≥ 256-bit random, shown once); only a keyed hash is stored. At most one active per vehicle.
CREATE TABLE device_credentials (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vehicle_id      text NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    secret_hash     bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    revoked_reason  text
);
CREATE UNIQUE INDEX device_credentials_one_active ON device_credentials (vehicle_id) WHERE revoked_at IS NULL;

-- ---------------------------------------------------------------------------------------------------
-- Telemetry (time series) and latest state
-- ---------------------------------------------------------------------------------------------------
-- Partitioned by device time (daily partitions, created ahead and dropped after the retention period by
-- fleet_maintenance(), sql/code/40_maintenance.sql). The primary key makes a QoS 1 redelivery (same
-- vehicle, time and msg_id) a no-op and doubles as the (vehicle, time) index.
CREATE TABLE telemetry (
    vehicle_id    text NOT NULL,
    ts            timestamptz NOT NULL,                 -- device time
    received_at   timestamptz NOT NULL,                 -- broker receive time
    seq           bigint,
    msg_id        text NOT NULL,
    lat           double precision NOT NULL,
    lon           double precision NOT NULL,
    heading_deg   real,
    speed_mps     real,
    battery_pct   real,
    odometer_m    double precision,
    extra         jsonb,
    clock_skewed  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (vehicle_id, ts, msg_id)
) PARTITION BY RANGE (ts);
CREATE INDEX telemetry_ts_brin ON telemetry USING brin (ts);

-- Health/status history (low rate: on change and periodically).
CREATE TABLE vehicle_status (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vehicle_id    text NOT NULL,
    ts            timestamptz NOT NULL,
    received_at   timestamptz NOT NULL,
    seq           bigint,
    msg_id        text NOT NULL,
    mode          text NOT NULL CHECK (mode IN ('AUTO', 'MANUAL', 'SERVICE', 'ESTOP')),
    battery_pct   real,
    charging      boolean,
    estop         boolean NOT NULL DEFAULT false,
    errors        jsonb NOT NULL DEFAULT '[]'::jsonb,
    health        text NOT NULL CHECK (health IN ('OK', 'WARNING', 'FATAL')),
    sw_version    text,
    clock_skewed  boolean NOT NULL DEFAULT false,
    UNIQUE (vehicle_id, msg_id)
);
CREATE INDEX vehicle_status_vehicle_ts ON vehicle_status (vehicle_id, ts DESC);

-- One row per vehicle: the newest known position, health and presence. Telemetry and status each only
-- move forward by (device time, seq); presence is ordered by server time.
CREATE TABLE vehicle_state (
    vehicle_id             text PRIMARY KEY REFERENCES vehicles (id) ON DELETE CASCADE,
    -- from telemetry
    telemetry_ts           timestamptz,
    telemetry_seq          bigint,
    telemetry_received_at  timestamptz,
    lat                    double precision,
    lon                    double precision,
    heading_deg            real,
    speed_mps              real,
    battery_pct            real,
    odometer_m             double precision,
    -- from status
    status_ts              timestamptz,
    status_seq             bigint,
    status_received_at     timestamptz,
    mode                   text,
    charging               boolean,
    estop                  boolean,
    errors                 jsonb,
    health                 text,
    sw_version             text,
    -- presence (broker events, retained connection topic, liveness timeout)
    online                 boolean NOT NULL DEFAULT false,
    connection_state       text,                        -- ONLINE | OFFLINE | CONNECTIONBROKEN (vehicle's own view)
    connected_at           timestamptz,
    disconnected_at        timestamptz,
    disconnect_reason      text,
    last_seen_at           timestamptz,                 -- server time of the last message of any kind
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vehicle_state_online ON vehicle_state (online);

-- ---------------------------------------------------------------------------------------------------
-- Missions
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE mission_states (
    state        text PRIMARY KEY,
    terminal     boolean NOT NULL,
    description  text NOT NULL
);
INSERT INTO mission_states (state, terminal, description) VALUES
    ('queued',           false, 'created; waiting for the vehicle to be online and idle'),
    ('dispatched',       false, 'sent to the vehicle; waiting for it to accept or reject'),
    ('accepted',         false, 'the vehicle accepted it'),
    ('in_progress',      false, 'the vehicle reports progress'),
    ('cancel_requested', false, 'an operator asked to cancel; waiting for the vehicle to confirm'),
    ('completed',        true,  'the vehicle completed it'),
    ('failed',           true,  'the vehicle reported failure'),
    ('rejected',         true,  'the vehicle rejected it'),
    ('cancelled',        true,  'cancelled by an operator or the vehicle'),
    ('timed_out',        true,  'no progress within timeout_s'),
    ('expired',          true,  'not dispatched before its TTL passed');

-- The one definition of allowed transitions. The SQL ingest path enforces it for vehicle events; the api
-- reads the same table for operator and system events, so there is never a second copy of the rules.
CREATE TABLE mission_transitions (
    from_state  text NOT NULL REFERENCES mission_states (state),
    event       text NOT NULL,
    actor       text NOT NULL CHECK (actor IN ('operator', 'vehicle', 'system')),
    to_state    text NOT NULL REFERENCES mission_states (state),
    PRIMARY KEY (from_state, event, actor)
);
INSERT INTO mission_transitions (from_state, event, actor, to_state) VALUES
    -- system: dispatcher, timers
    ('queued',           'dispatch',  'system',   'dispatched'),
    ('dispatched',       'requeue',   'system',   'queued'),
    ('queued',           'expire',    'system',   'expired'),
    ('dispatched',       'timeout',   'system',   'timed_out'),
    ('accepted',         'timeout',   'system',   'timed_out'),
    ('in_progress',      'timeout',   'system',   'timed_out'),
    ('cancel_requested', 'timeout',   'system',   'timed_out'),
    -- operator
    ('queued',           'cancel',    'operator', 'cancelled'),
    ('dispatched',       'cancel',    'operator', 'cancel_requested'),
    ('accepted',         'cancel',    'operator', 'cancel_requested'),
    ('in_progress',      'cancel',    'operator', 'cancel_requested'),
    -- vehicle
    ('dispatched',       'accepted',  'vehicle',  'accepted'),
    ('dispatched',       'rejected',  'vehicle',  'rejected'),
    ('accepted',         'progress',  'vehicle',  'in_progress'),
    ('in_progress',      'progress',  'vehicle',  'in_progress'),
    ('accepted',         'completed', 'vehicle',  'completed'),
    ('in_progress',      'completed', 'vehicle',  'completed'),
    ('accepted',         'failed',    'vehicle',  'failed'),
    ('in_progress',      'failed',    'vehicle',  'failed'),
    ('dispatched',       'cancelled', 'vehicle',  'cancelled'),
    ('accepted',         'cancelled', 'vehicle',  'cancelled'),
    ('in_progress',      'cancelled', 'vehicle',  'cancelled'),
    -- a vehicle that has not yet seen the cancel command keeps reporting; the mission stays cancel_requested
    ('cancel_requested', 'accepted',  'vehicle',  'cancel_requested'),
    ('cancel_requested', 'progress',  'vehicle',  'cancel_requested'),
    ('cancel_requested', 'cancelled', 'vehicle',  'cancelled'),
    ('cancel_requested', 'rejected',  'vehicle',  'rejected'),
    ('cancel_requested', 'completed', 'vehicle',  'completed'),
    ('cancel_requested', 'failed',    'vehicle',  'failed');

CREATE TABLE missions (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    vehicle_id        text NOT NULL REFERENCES vehicles (id),
    fleet_id          text NOT NULL REFERENCES fleets (id),
    name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    waypoints         jsonb NOT NULL DEFAULT '[]'::jsonb,
    tasks             jsonb NOT NULL DEFAULT '[]'::jsonb,
    priority          integer NOT NULL DEFAULT 0,
    state             text NOT NULL DEFAULT 'queued' REFERENCES mission_states (state),
    timeout_s         integer CHECK (timeout_s > 0),
    ttl_s             integer CHECK (ttl_s > 0),
    expires_at        timestamptz,
    progress_percent  real,
    progress_step     text,
    progress_eta_s    integer,
    failure_reason    text,
    created_by        text,
    idempotency_key   text,
    request_hash      text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    dispatched_at     timestamptz,
    accepted_at       timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz,
    last_event_at     timestamptz,
    dispatch_attempts integer NOT NULL DEFAULT 0,
    command_msg_id    text
);
CREATE INDEX missions_vehicle_state ON missions (vehicle_id, state);
CREATE INDEX missions_fleet_created ON missions (fleet_id, created_at);
CREATE INDEX missions_created ON missions (created_at);
CREATE INDEX missions_open ON missions (state) WHERE state NOT IN
    ('completed', 'failed', 'rejected', 'cancelled', 'timed_out', 'expired');
CREATE UNIQUE INDEX missions_idempotency ON missions (created_by, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- Append-only timeline of every transition (and every progress report).
CREATE TABLE mission_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mission_id   uuid NOT NULL REFERENCES missions (id) ON DELETE CASCADE,
    event        text NOT NULL,
    from_state   text REFERENCES mission_states (state),
    to_state     text NOT NULL REFERENCES mission_states (state),
    actor_type   text NOT NULL CHECK (actor_type IN ('operator', 'vehicle', 'system')),
    actor_id     text,
    server_time  timestamptz NOT NULL DEFAULT clock_timestamp(),
    device_time  timestamptz,
    msg_id       text,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX mission_events_mission ON mission_events (mission_id, id);
CREATE UNIQUE INDEX mission_events_dedup ON mission_events (mission_id, msg_id) WHERE msg_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------------
-- Dead letters and audit
-- ---------------------------------------------------------------------------------------------------
-- Every inbound message that could not be stored, with why. Nothing is dropped silently.
CREATE TABLE rejected_messages (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at        timestamptz NOT NULL,
    rejected_at        timestamptz NOT NULL DEFAULT now(),
    clientid           text,
    topic              text,
    reason             text NOT NULL,
    detail             text,
    payload            bytea,                           -- raw bytes, capped
    payload_size       integer,
    payload_truncated  boolean NOT NULL DEFAULT false
);
CREATE INDEX rejected_messages_received ON rejected_messages (received_at);
CREATE INDEX rejected_messages_client ON rejected_messages (clientid, received_at);

-- Who did what: operator actions, revocations, emergency stops, registrations.
CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor_type   text NOT NULL CHECK (actor_type IN ('operator', 'vehicle', 'system')),
    actor_id     text,
    action       text NOT NULL,
    target_type  text,
    target_id    text,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_target ON audit_log (target_type, target_id, at);
