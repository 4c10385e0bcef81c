-- 050_alarms.sql — alarms raised by rules over the fleet's state, their history, the webhooks told about them
-- and the log of every delivery (docs/OPERATIONS.md, Alarms). The rules, the lifecycle and the notification
-- functions are in sql/code/80_alarms.sql; the worker evaluates the rules and delivers the webhooks
-- (api/notifier.py).
--
-- Lifecycle: active → acknowledged (by whom, when) → cleared. A condition alarm (offline, low battery, health,
-- e-stop, mission stalled, dead-letter spike) notes when its condition ends (in_condition = false) and is
-- cleared once it is both over and acknowledged; an event alarm (mission failed or timed out) is over as soon as
-- it is raised. The same alarm coming back before it is cleared counts up instead of adding a row.

-- ---------------------------------------------------------------------------------------------------
-- Settings (one row; change with PATCH /api/v1/alarms/settings or UPDATE alarm_settings SET …)
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE alarm_settings (
    id                      boolean PRIMARY KEY DEFAULT true CHECK (id),
    offline_after           interval NOT NULL DEFAULT '5 minutes' CHECK (offline_after >= interval '1 second'),
    battery_low_pct         real NOT NULL DEFAULT 15 CHECK (battery_low_pct BETWEEN 0 AND 100),
    battery_clear_pct       real NOT NULL DEFAULT 20 CHECK (battery_clear_pct BETWEEN 0 AND 100),
    mission_stalled_after   interval NOT NULL DEFAULT '5 minutes' CHECK (mission_stalled_after >= interval '1 second'),
    dead_letter_window      interval NOT NULL DEFAULT '1 minute' CHECK (dead_letter_window >= interval '1 second'),
    dead_letter_threshold   integer NOT NULL DEFAULT 20 CHECK (dead_letter_threshold >= 1),
    CHECK (battery_clear_pct >= battery_low_pct)
);
INSERT INTO alarm_settings DEFAULT VALUES;

-- ---------------------------------------------------------------------------------------------------
-- Alarms and their history
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE alarm_kinds (
    kind         text PRIMARY KEY,
    condition    boolean NOT NULL,   -- false: an event, over as soon as it is raised
    description  text NOT NULL
);
INSERT INTO alarm_kinds (kind, condition, description) VALUES
    ('vehicle_offline',    true,  'the vehicle has been offline longer than alarm_settings.offline_after'),
    ('battery_low',        true,  'battery below battery_low_pct (over again above battery_clear_pct)'),
    ('health',             true,  'the vehicle reports health WARNING or FATAL'),
    ('estop_active',       true,  'the vehicle is emergency-stopped'),
    ('mission_failed',     false, 'a mission ended failed'),
    ('mission_timed_out',  false, 'a mission timed out'),
    ('mission_stalled',    true,  'an active mission has had no event for mission_stalled_after'),
    ('dead_letter_spike',  true,  'dead_letter_threshold or more dead-lettered messages from one vehicle within '
                                  'dead_letter_window');

CREATE TABLE alarms (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind              text NOT NULL REFERENCES alarm_kinds (kind),
    subject           text NOT NULL,               -- what it is about: the vehicle id, or the mission id
    fleet_id          text NOT NULL REFERENCES fleets (id),
    vehicle_id        text REFERENCES vehicles (id) ON DELETE CASCADE,
    mission_id        uuid REFERENCES missions (id) ON DELETE CASCADE,
    severity          text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state             text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'acknowledged', 'cleared')),
    in_condition      boolean NOT NULL,
    count             integer NOT NULL DEFAULT 1,
    message           text NOT NULL,
    details           jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_raised_at   timestamptz NOT NULL DEFAULT now(),
    last_raised_at    timestamptz NOT NULL DEFAULT now(),
    condition_ended_at timestamptz,
    acknowledged_at   timestamptz,
    acknowledged_by   text,
    cleared_at        timestamptz,
    cleared_by        text,                        -- an operator, or 'system' when the rule cleared it
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'cleared') = (cleared_at IS NOT NULL)),
    CHECK (state = 'active' OR acknowledged_at IS NOT NULL OR cleared_by = 'system')
);
-- At most one open alarm per kind and subject: a repeat counts up.
CREATE UNIQUE INDEX alarms_open ON alarms (kind, subject) WHERE state <> 'cleared';
CREATE INDEX alarms_fleet_state ON alarms (fleet_id, state, last_raised_at DESC);
CREATE INDEX alarms_updated ON alarms (updated_at);
CREATE INDEX alarms_subject ON alarms (subject, kind);

-- Every change of an alarm, in order: what the console's timeline and the webhooks are told.
CREATE TABLE alarm_events (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alarm_id  bigint NOT NULL REFERENCES alarms (id) ON DELETE CASCADE,
    event     text NOT NULL CHECK (event IN ('raised', 'repeated', 'escalated', 'condition_ended', 'acknowledged',
                                             'cleared')),
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor     text NOT NULL,                       -- 'system' or the operator's username
    detail    jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX alarm_events_alarm ON alarm_events (alarm_id, id);

-- ---------------------------------------------------------------------------------------------------
-- Webhooks and their delivery log
-- ---------------------------------------------------------------------------------------------------
-- The secret signs every delivery (HMAC-SHA-256, header X-Fleet-Signature); it is shown once, at creation.
CREATE TABLE alarm_webhooks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url         text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2000),
    secret      text NOT NULL CHECK (length(secret) >= 32),
    fleet_id    text REFERENCES fleets (id) ON DELETE CASCADE,   -- NULL: every fleet
    min_severity text NOT NULL DEFAULT 'info' CHECK (min_severity IN ('info', 'warning', 'critical')),
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id       bigint NOT NULL REFERENCES alarm_webhooks (id) ON DELETE CASCADE,
    alarm_event_id   bigint NOT NULL REFERENCES alarm_events (id) ON DELETE CASCADE,
    payload          jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    last_status      integer,                      -- the receiver's HTTP status of the last attempt
    last_error       text,                         -- or why the attempt got no answer
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, alarm_event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id DESC);

-- ---------------------------------------------------------------------------------------------------
-- What the console's event stream resumes from (api/live.py)
-- ---------------------------------------------------------------------------------------------------
-- A browser that reconnects is sent the mission transitions since its last event: by server time.
CREATE INDEX mission_events_server_time ON mission_events (server_time);
-- Mission alarms look for the missions that ended failed or timed out lately.
CREATE INDEX missions_finished_badly ON missions (finished_at) WHERE state IN ('failed', 'timed_out');
CREATE INDEX missions_updated ON missions (updated_at);
