-- 010_registration.sql — what vehicle registration, authentication and revocation need beyond 001.
--
-- Enrollment tokens become traceable: which registration request used a token (so a broker retry of the same
-- request re-sends the same answer instead of failing with token_used) and which device credential it produced.
-- A token can also be withdrawn without being used: a newer token supersedes it, or the vehicle is revoked or
-- decommissioned. The lookup of every MQTT CONNECT, vehicle_authn_lookup(), is code:
-- sql/code/50_vehicle_authn.sql.
--
-- This text replaces one that also held that function:
-- supersedes sha256: 4dd7bd943ecea1e3a6e49b0e539736f9a667e2300fcb0bf5d65c950d315ac8c5

ALTER TABLE enrollment_tokens
    ADD COLUMN request_msg_id  text,                    -- msg_id of the registration request that used it
    ADD COLUMN credential_id   bigint REFERENCES device_credentials (id),
    ADD COLUMN revoked_at      timestamptz,
    ADD COLUMN revoked_reason  text;

-- "The vehicle's outstanding tokens" (superseding, revocation) without scanning its used ones.
CREATE INDEX enrollment_tokens_open ON enrollment_tokens (vehicle_id) WHERE used_at IS NULL AND revoked_at IS NULL;
