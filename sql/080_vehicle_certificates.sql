-- 080_vehicle_certificates.sql — certificate identity (mutual TLS) as the alternative to a device secret.
--
-- A vehicle that sends a CSR with its registration request gets a client certificate signed by the fleet CA
-- (fleetcore/certificates.py) instead of a device secret, and from then on connects to the mTLS listener with it
-- (docs/PROTOCOL.md → Certificate identity). The certificate itself is public: it is kept whole, so a broker retry
-- of the same registration request can re-send it, and so operators can see what was issued. The broker sends
-- the presented certificate with every CONNECT (${cert_pem}); authsvc admits it only if its SHA-256 fingerprint is
-- the vehicle's one active certificate here — a rotated or revoked certificate stops working at once, before its
-- not_after, exactly like a rotated or revoked device secret. The lookup is code: sql/code/50_vehicle_authn.sql.

CREATE TABLE vehicle_certificates (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vehicle_id          text NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    serial_number       text NOT NULL UNIQUE CHECK (serial_number ~ '^[0-9a-f]{1,40}$'),   -- hex, as issued
    fingerprint_sha256  bytea NOT NULL UNIQUE CHECK (length(fingerprint_sha256) = 32),  -- of the DER encoding
    not_before          timestamptz NOT NULL,
    not_after           timestamptz NOT NULL CHECK (not_after > not_before),
    certificate_pem     text NOT NULL,
    -- the enrollment token whose registration issued it (its replay re-sends this certificate)
    enrollment_token_id bigint REFERENCES enrollment_tokens (id),
    created_at          timestamptz NOT NULL DEFAULT now(),
    revoked_at          timestamptz,
    revoked_reason      text
);
-- A vehicle has at most one working certificate, as it has at most one working device secret.
CREATE UNIQUE INDEX vehicle_certificates_one_active ON vehicle_certificates (vehicle_id) WHERE revoked_at IS NULL;
CREATE INDEX vehicle_certificates_token ON vehicle_certificates (enrollment_token_id);
