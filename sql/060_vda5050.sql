-- 060_vda5050.sql — the VDA 5050 2.0 profile (docs/VDA5050.md): a vehicle that speaks VDA 5050 instead of our own
-- protocol. It is a vehicle like any other (same row in vehicles, same credentials, presence, missions); these
-- tables hold only what the profile adds.

-- The VDA identity of a vehicle: its topics are uagv/v2/{manufacturer}/{serial_number}/…, while its MQTT client id
-- and username stay our vehicle id. The map origin turns the vehicle's map coordinates (x east, y north, metres)
-- into the latitude/longitude the rest of the backend stores, and the mission waypoints back into node positions.
-- Topic levels must not contain '/', '+' or '#'; the standard allows A-Z a-z 0-9 _ . : - in a serial number.
CREATE TABLE vda5050_vehicles (
    vehicle_id     text PRIMARY KEY REFERENCES vehicles (id) ON DELETE CASCADE,
    manufacturer   text NOT NULL CHECK (manufacturer ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    serial_number  text NOT NULL CHECK (serial_number ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    map_id         text NOT NULL DEFAULT 'map' CHECK (length(map_id) BETWEEN 1 AND 100),
    origin_lat     double precision NOT NULL CHECK (origin_lat BETWEEN -89 AND 89),
    origin_lon     double precision NOT NULL CHECK (origin_lon BETWEEN -180 AND 180),
    UNIQUE (manufacturer, serial_number)
);

-- headerId is "defined per topic and incremented by 1 with each sent message": one counter per vehicle and topic
-- we publish on, kept in the database so that it keeps increasing across api restarts and api processes.
CREATE TABLE vda5050_header_ids (
    vehicle_id      text NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    topic           text NOT NULL CHECK (topic IN ('order', 'instantActions')),
    last_header_id  bigint NOT NULL,
    PRIMARY KEY (vehicle_id, topic)
);

-- One order per attempt of a mission (a retried mission is a new order). The message is stored as sent, so the
-- worker can send it again after a restart: order is QoS 0, and it is re-sent until the vehicle's state names it.
CREATE TABLE vda5050_orders (
    order_id         text PRIMARY KEY,
    mission_id       uuid NOT NULL REFERENCES missions (id) ON DELETE CASCADE,
    attempt          integer NOT NULL,
    vehicle_id       text NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    order_update_id  bigint NOT NULL DEFAULT 0,
    message          jsonb NOT NULL,
    action_ids       text[] NOT NULL,       -- the order's own actions (tasks), whose states decide completion
    last_node_id     text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sends            integer NOT NULL DEFAULT 0,
    last_sent_at     timestamptz,
    seen_at          timestamptz,           -- the first state that named this order
    last_node_seq    bigint,                -- the last lastNodeSequenceId applied as progress
    UNIQUE (mission_id, attempt)
);
CREATE INDEX vda5050_orders_unseen ON vda5050_orders (last_sent_at) WHERE seen_at IS NULL;

-- Instant actions we sent (cancelOrder, startPause, stopPause): their actionId is how a state confirms them.
CREATE TABLE vda5050_instant_actions (
    action_id    text PRIMARY KEY,
    vehicle_id   text NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    action_type  text NOT NULL,
    mission_id   uuid REFERENCES missions (id) ON DELETE CASCADE,
    sent_at      timestamptz NOT NULL DEFAULT now(),
    status       text,                       -- the last actionStatus the vehicle reported
    status_at    timestamptz
);
CREATE INDEX vda5050_instant_actions_mission ON vda5050_instant_actions (mission_id) WHERE mission_id IS NOT NULL;

-- The official JSON schemas, as shipped by the installed package (fleetcore/vda5050.py loads them on every
-- migrate; nothing is fetched at run time). The ingest validates every inbound message against them.
CREATE TABLE vda5050_schemas (
    name       text PRIMARY KEY CHECK (name IN ('connection', 'state', 'order', 'instantActions', 'factsheet',
                                                'visualization')),
    document   jsonb NOT NULL,
    source     text NOT NULL,
    loaded_at  timestamptz NOT NULL DEFAULT now()
);
