-- 040_emergency_stops.sql — an emergency stop is a state, not a message (docs/PROTOCOL.md, Emergency stop).
--
-- emergency_stops: every stop an operator set, per vehicle, per fleet or for all fleets, with who set it and why,
-- and who released it. A stop applies while it is not released; at most one active stop per target, so a second
-- stop of the same target answers with the first.
--
-- vehicle_estop_commands: per vehicle, what the backend wants it to have been told — `stop` while any active stop
-- applies, `release` once none does after one did — and whether the vehicle confirmed it with a status report
-- (`estop: true` for a stop, `false` for a release). The worker re-sends an unconfirmed command with back-off,
-- and at once when the vehicle connects (api/emergency_commands.py).

CREATE TABLE emergency_stops (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope           text NOT NULL CHECK (scope IN ('vehicle', 'fleet', 'all')),
    vehicle_id      text REFERENCES vehicles (id),
    fleet_id        text REFERENCES fleets (id),
    reason          text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    set_by          text NOT NULL,
    set_at          timestamptz NOT NULL DEFAULT now(),
    released_by     text,
    released_at     timestamptz,
    release_reason  text,
    CHECK ((scope = 'vehicle') = (vehicle_id IS NOT NULL)),
    CHECK ((scope = 'fleet') = (fleet_id IS NOT NULL)),
    CHECK ((released_at IS NULL) = (released_by IS NULL))
);
CREATE UNIQUE INDEX emergency_stops_one_active ON emergency_stops (scope, COALESCE(vehicle_id, fleet_id, '*'))
    WHERE released_at IS NULL;
CREATE INDEX emergency_stops_set_at ON emergency_stops (set_at);

CREATE TABLE vehicle_estop_commands (
    vehicle_id       text PRIMARY KEY REFERENCES vehicles (id) ON DELETE CASCADE,
    command          text NOT NULL CHECK (command IN ('stop', 'release')),
    stop_id          bigint NOT NULL REFERENCES emergency_stops (id),  -- the stop that applies / was released
    since            timestamptz NOT NULL DEFAULT now(),               -- when this command became the wanted one
    sends            integer NOT NULL DEFAULT 0,
    last_sent_at     timestamptz,
    last_msg_id      text,
    last_delivered   boolean,
    next_send_at     timestamptz NOT NULL DEFAULT now(),
    acknowledged_at  timestamptz
);
CREATE INDEX vehicle_estop_commands_open ON vehicle_estop_commands (next_send_at) WHERE acknowledged_at IS NULL;
CREATE INDEX vehicle_estop_commands_stop ON vehicle_estop_commands (stop_id);
