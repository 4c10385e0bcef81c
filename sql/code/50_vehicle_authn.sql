-- 50_vehicle_authn.sql — the lookup behind vehicle authentication (authsvc, fleetcore/registry.py). The tables
-- it reads are in sql/001_core.sql and sql/010_registration.sql.
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

-- The one query of every MQTT CONNECT (docs/ARCHITECTURE.md): the vehicle, its active device credential and — when the
-- password is an enrollment token — that token, found by the keyed hash of the password. Three index probes
-- (vehicles PK, device_credentials_one_active, enrollment_tokens.token_hash), one round trip. PL/pgSQL keeps
-- the plan cached per connection, so a reconnect storm does not re-plan it thousands of times.
-- The hash comparison itself is done by the caller in constant time; this function only fetches.
-- A VDA 5050 vehicle's identity comes along (a fourth index probe), for its topic ACL (authsvc/acl.py).
-- DROP first: CREATE OR REPLACE cannot change the columns a function returns.
DROP FUNCTION IF EXISTS vehicle_authn_lookup(text, bytea);
CREATE FUNCTION vehicle_authn_lookup(p_vehicle_id text, p_password_hash bytea)
RETURNS TABLE (
    fleet_id          text,
    status            text,
    secret_hash       bytea,
    token_vehicle_id  text,
    token_expired     boolean,
    token_used        boolean,
    token_revoked     boolean,
    vda_manufacturer  text,
    vda_serial_number text
)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT v.fleet_id, v.status, c.secret_hash,
           t.vehicle_id, t.expires_at <= now(), t.used_at IS NOT NULL, t.revoked_at IS NOT NULL,
           vda.manufacturer, vda.serial_number
      FROM vehicles v
      LEFT JOIN vda5050_vehicles vda ON vda.vehicle_id = v.id
      LEFT JOIN device_credentials c ON c.vehicle_id = v.id AND c.revoked_at IS NULL
      LEFT JOIN enrollment_tokens t ON t.token_hash = p_password_hash
     WHERE v.id = p_vehicle_id;
END;
$$;

-- The query of a CONNECT with a client certificate (the mTLS listener): the vehicle and whether the presented
-- certificate — by the SHA-256 of its DER encoding — is the vehicle's active, unexpired certificate. No password is
-- involved: the TLS handshake proved the client holds the certificate's key, the fleet CA vouches for it, and this
-- row says it is still the one we issued to this vehicle. Two index probes (vehicles PK,
-- vehicle_certificates.fingerprint_sha256) and the VDA identity, one round trip.
DROP FUNCTION IF EXISTS vehicle_cert_authn_lookup(text, bytea);
CREATE FUNCTION vehicle_cert_authn_lookup(p_vehicle_id text, p_fingerprint bytea)
RETURNS TABLE (
    fleet_id          text,
    status            text,
    cert_vehicle_id   text,
    cert_revoked      boolean,
    cert_expired      boolean,
    vda_manufacturer  text,
    vda_serial_number text
)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT v.fleet_id, v.status, c.vehicle_id, c.revoked_at IS NOT NULL, c.not_after <= now(),
           vda.manufacturer, vda.serial_number
      FROM vehicles v
      LEFT JOIN vda5050_vehicles vda ON vda.vehicle_id = v.id
      LEFT JOIN vehicle_certificates c ON c.fingerprint_sha256 = p_fingerprint
     WHERE v.id = p_vehicle_id;
END;
$$;
