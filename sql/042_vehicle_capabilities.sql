-- 042_vehicle_capabilities.sql — what a vehicle says it can do (docs/PROTOCOL.md, Capability sheet).
--
-- One row per version of a vehicle's sheet: the document as the vehicle sent it (kept whole, so a richer sheet —
-- a VDA 5050 factsheet, say — loses nothing) and the key fields the backend checks missions against, typed.
-- A NULL key field means the vehicle did not state it, and nothing is checked against it. A new version is
-- stored only when the document changes; vehicles.capabilities_version names the current one.

CREATE TABLE vehicle_capabilities (
    vehicle_id           text NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    version              integer NOT NULL CHECK (version >= 1),
    document             jsonb NOT NULL,
    task_types           text[],
    max_payload_kg       real,
    max_speed_mps        real,
    battery_capacity_wh  real,
    source               text NOT NULL,        -- 'registration' (a later profile adds its own, e.g. a factsheet)
    reported_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vehicle_id, version)
);

ALTER TABLE vehicles ADD COLUMN capabilities_version integer;
