-- 041_mission_control.sql — pause and resume, operator aborts, retries, priority changes, commands re-sent until
-- the vehicle confirms them, and the per-fleet battery threshold of dispatch gating (docs/PROTOCOL.md, Missions).

INSERT INTO mission_states (state, terminal, description) VALUES
    ('paused', false, 'an operator paused it (or the vehicle did); the vehicle holds until resumed');

INSERT INTO mission_transitions (from_state, event, actor, to_state) VALUES
    -- operator: pause and resume a running mission; cancel a paused one
    ('accepted',         'pause',       'operator', 'paused'),
    ('in_progress',      'pause',       'operator', 'paused'),
    ('paused',           'resume',      'operator', 'in_progress'),
    ('paused',           'cancel',      'operator', 'cancel_requested'),
    -- operator: a queued mission's priority changed (recorded in the timeline, the state stays)
    ('queued',           'reprioritize', 'operator', 'queued'),
    -- operator: the vehicle was revoked or decommissioned while it had the mission
    ('dispatched',       'abort',       'operator', 'failed'),
    ('accepted',         'abort',       'operator', 'failed'),
    ('in_progress',      'abort',       'operator', 'failed'),
    ('cancel_requested', 'abort',       'operator', 'failed'),
    ('paused',           'abort',       'operator', 'failed'),
    -- vehicle: confirms a pause (or pauses by itself) and a resume; ends a paused mission
    ('accepted',         'paused',      'vehicle',  'paused'),
    ('in_progress',      'paused',      'vehicle',  'paused'),
    ('paused',           'paused',      'vehicle',  'paused'),
    ('paused',           'resumed',     'vehicle',  'in_progress'),
    ('in_progress',      'resumed',     'vehicle',  'in_progress'),
    ('paused',           'progress',    'vehicle',  'paused'),
    ('paused',           'completed',   'vehicle',  'completed'),
    ('paused',           'failed',      'vehicle',  'failed'),
    ('paused',           'cancelled',   'vehicle',  'cancelled'),
    ('cancel_requested', 'paused',      'vehicle',  'cancel_requested'),
    ('cancel_requested', 'resumed',     'vehicle',  'cancel_requested'),
    -- system: the retry policy puts a failed, timed-out or rejected attempt back in the queue, in the same
    -- transaction as the outcome, so a retried mission is never seen resting in that state
    ('failed',           'retry',       'system',   'queued'),
    ('timed_out',        'retry',       'system',   'queued'),
    ('rejected',         'retry',       'system',   'queued');

ALTER TABLE missions
    ADD COLUMN max_attempts integer NOT NULL DEFAULT 1 CHECK (max_attempts BETWEEN 1 AND 20),
    ADD COLUMN retry_on text[] NOT NULL DEFAULT '{failed,timed_out,rejected}'
        CHECK (retry_on <@ '{failed,timed_out,rejected}'::text[]),
    ADD COLUMN attempt integer NOT NULL DEFAULT 1,
    ADD COLUMN payload_kg real CHECK (payload_kg >= 0),
    -- the operator command (cancel, pause, resume) the vehicle has not confirmed yet; re-sent with back-off
    ADD COLUMN pending_command text CHECK (pending_command IN ('cancel', 'pause', 'resume')),
    ADD COLUMN pending_command_since timestamptz,
    ADD COLUMN command_sends integer NOT NULL DEFAULT 0,
    ADD COLUMN command_next_at timestamptz;
CREATE INDEX missions_pending_command ON missions (command_next_at) WHERE pending_command IS NOT NULL;

-- A paused mission is still with its vehicle: the vehicle is busy.
DROP INDEX missions_active_by_vehicle;
CREATE INDEX missions_active_by_vehicle ON missions (vehicle_id)
    WHERE state IN ('dispatched', 'accepted', 'in_progress', 'cancel_requested', 'paused');

-- Which attempt of its mission an event belongs to (the report lists every attempt).
ALTER TABLE mission_events ADD COLUMN attempt integer NOT NULL DEFAULT 1;

-- Dispatch gating: no mission goes to a vehicle whose battery is below its fleet's threshold.
ALTER TABLE fleets ADD COLUMN dispatch_min_battery_pct real NOT NULL DEFAULT 15
    CHECK (dispatch_min_battery_pct BETWEEN 0 AND 100);
