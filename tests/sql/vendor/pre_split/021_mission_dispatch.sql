-- 021_mission_dispatch.sql — what the api's dispatcher needs beyond the core mission tables.
--
-- A dispatch that finds no subscriber (the vehicle just went offline) puts the mission back to `queued` and
-- waits a little before the next attempt, growing with each attempt, so a flapping vehicle does not make the
-- dispatcher spin.
ALTER TABLE missions ADD COLUMN next_attempt_at timestamptz;

-- The dispatcher's two hot questions: "is this vehicle busy?" and "what is its next queued mission?".
CREATE INDEX missions_vehicle_queue ON missions (vehicle_id, priority DESC, created_at) WHERE state = 'queued';
CREATE INDEX missions_active_by_vehicle ON missions (vehicle_id)
    WHERE state IN ('dispatched', 'accepted', 'in_progress', 'cancel_requested');
CREATE INDEX missions_queued_expiry ON missions (expires_at) WHERE state = 'queued';
