-- 010_registration.sql — what vehicle registration, authentication and revocation need beyond 001.
--
-- Enrollment tokens become traceable: which registration request used a token (so a broker retry of the same
-- request re-sends the same answer instead of failing with token_used) and which device credential it produced.
-- A token can also be withdrawn without being used: a newer token supersedes it, or the vehicle is revoked or
-- decommissioned.
ALTER TABLE enrollment_tokens
    ADD COLUMN request_msg_id  text,                    -- msg_id of the registration request that used it
    ADD COLUMN credential_id   bigint REFERENCES device_credentials (id),
    ADD COLUMN revoked_at      timestamptz,
    ADD COLUMN revoked_reason  text;

-- "The vehicle's outstanding tokens" (superseding, revocation) without scanning its used ones.
CREATE INDEX enrollment_tokens_open ON enrollment_tokens (vehicle_id) WHERE used_at IS NULL AND revoked_at IS NULL;

-- The one query of every MQTT CONNECT (design.md §2): the vehicle, its active device credential and — when the
-- password is an enrollment token — that token, found by the keyed hash of the password. Three index probes
-- (vehicles PK, device_credentials_one_active, enrollment_tokens.token_hash), one round trip. PL/pgSQL keeps
-- the plan cached per connection, so a reconnect storm does not re-plan it thousands of times.
-- The hash comparison itself is done by the caller in constant time; this function only fetches.
CREATE FUNCTION vehicle_authn_lookup(p_vehicle_id text, p_password_hash bytea)
RETURNS TABLE (
    fleet_id          text,
    status            text,
    secret_hash       bytea,
    token_vehicle_id  text,
    token_expired     boolean,
    token_used        boolean,
    token_revoked     boolean
)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT v.fleet_id, v.status, c.secret_hash,
           t.vehicle_id, t.expires_at <= now(), t.used_at IS NOT NULL, t.revoked_at IS NOT NULL
      FROM vehicles v
      LEFT JOIN device_credentials c ON c.vehicle_id = v.id AND c.revoked_at IS NULL
      LEFT JOIN enrollment_tokens t ON t.token_hash = p_password_hash
     WHERE v.id = p_vehicle_id;
END;
$$;
