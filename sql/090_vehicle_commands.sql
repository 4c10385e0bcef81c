-- 090_vehicle_commands.sql — the command outbox of the vehicle HTTP fallback (docs/PROTOCOL.md → HTTP fallback).
--
-- Every command the backend publishes to one vehicle (on fleet/v1/{vid}/cmd) is also recorded here, before it is
-- published, so a vehicle whose network blocks MQTT can fetch it over HTTP (GET /api/v1/vehicle/commands). A
-- command is pending until it is acknowledged once: over HTTP (POST …/commands/{msg_id}/ack), or by the
-- confirmation the protocol already asks for (a mission event, a status report; sql/code/90_vehicle_commands.sql),
-- whichever channel that arrives on. The functions are in sql/code/90_vehicle_commands.sql.
CREATE TABLE vehicle_commands (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- the order commands are handed out in
    vehicle_id  text NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    msg_id      text NOT NULL,
    type        text NOT NULL,
    command     jsonb NOT NULL,                 -- the envelope exactly as published
    mission_id  uuid,                           -- data.mission_id of mission.* commands: what confirms them
    created_at  timestamptz NOT NULL DEFAULT now(),
    acked_at    timestamptz,
    acked_via   text CHECK (acked_via IN ('http', 'mqtt')),     -- the channel the acknowledgement came over
    CHECK ((acked_at IS NULL) = (acked_via IS NULL)),
    UNIQUE (vehicle_id, msg_id)
);
-- "this vehicle's pending commands, in order" on every poll; and the confirmations' lookups
CREATE INDEX vehicle_commands_pending ON vehicle_commands (vehicle_id, id) WHERE acked_at IS NULL;
-- pruning a vehicle's old rows when it gets a new one
CREATE INDEX vehicle_commands_created ON vehicle_commands (vehicle_id, created_at);

-- When each vehicle last asked for its commands over HTTP: while that is recent, a command the broker could not
-- hand to an MQTT session still counts as delivered (the vehicle fetches it), so missions are not requeued.
CREATE TABLE vehicle_http_polls (
    vehicle_id  text PRIMARY KEY REFERENCES vehicles (id) ON DELETE CASCADE,
    polled_at   timestamptz NOT NULL
);
