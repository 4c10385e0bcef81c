"""The vehicle registry: enrollment tokens, device credentials, registration, revocation, decommissioning.

Shared by authsvc (MQTT authn and registration) and the api (operators), so both follow one set of rules:

* A vehicle is created ``pending`` with a one-time enrollment token (24 h by default). Issuing a new token
  supersedes the vehicle's unused ones.
* A client connecting with ``username = <vehicle id>``, ``clientid = _enroll-<vehicle id>`` and an unused,
  unexpired token of that vehicle is an ``enrolling`` client (never on the vehicle's own client id, whose
  persistent session it would otherwise resume); its registration request turns the token into a device secret
  (``register``). Registering again with a fresh token rotates the secret: the old one stops working in the same
  transaction, and authsvc then kicks the old secret's session.
* A client connecting with ``clientid = username = <vehicle id>`` and the active device secret of an ``active``
  vehicle is a ``vehicle``.
* Certificate identity instead of a secret: a registration request that carries a CSR gets a certificate signed by
  the fleet CA (fleetcore/certificates.py) and no secret. On the broker's mTLS listener a client whose certificate
  has CN = client id = username = <vehicle id>, and is that vehicle's active certificate (by fingerprint), is a
  ``vehicle`` without a password (``verify_certificate``). A vehicle has one identity at a time: registering
  again — with or without a CSR — withdraws its secret and its certificate and issues the new one.
* Revoking withdraws the secret (or certificate) and every unused token and kicks the live session; a token issued
  *after* the revocation re-admits the vehicle (an operator's deliberate decision, audited). Decommissioning is
  final.

Secrets and tokens are 256-bit; only their keyed hashes (HMAC-SHA-256 with ``FLEET_DEVICE_SECRET_KEY``) are stored
and compared in constant time. Every database function takes the caller's cursor (dict rows, as from
``Database.transaction()``) and writes its audit row in the same transaction; the caller commits.
"""
from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from fleetcore import capabilities, certificates, credentials, topics
from fleetcore.emqx_api import EmqxApi, EmqxApiError
from fleetcore.logs import log_event

log = logging.getLogger("fleetcore.registry")

DEFAULT_TOKEN_TTL_S = 24 * 3600
DEFAULT_REPLAY_WINDOW_S = 600
ROLE_VEHICLE = "vehicle"
ROLE_ENROLLING = "enrolling"


class RegistryError(Exception):
    """A registry operation that cannot be done; ``code`` is machine-readable."""

    code = "registry_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class VehicleNotFound(RegistryError):
    code = "not_found"


class FleetNotFound(RegistryError):
    code = "fleet_not_found"


class VehicleIdUnavailable(RegistryError):
    """The id is taken — by a vehicle of any fleet, whatever its state. One answer for every case, so creating a
    vehicle never tells an operator that an id exists in a fleet they cannot see."""
    code = "vehicle_id_unavailable"


class VdaIdentityTaken(RegistryError):
    code = "vda_identity_taken"


class VehicleStateConflict(RegistryError):
    code = "vehicle_state_conflict"


class VehicleRevoked(RegistryError):
    """An operator revoked the vehicle: only an explicit re-admission gives it a new token, never a routine
    renewal (a client that was refused must not undo the revocation by enrolling again)."""
    code = "vehicle_revoked"


@dataclass(frozen=True)
class Enrollment:
    vehicle_id: str
    fleet_id: str
    token: str              # shown once; only its hash is stored
    expires_at: datetime


@dataclass(frozen=True)
class AuthnDecision:
    allow: bool
    reason: str             # why (logged; never contains the password)
    role: str | None = None
    fleet_id: str | None = None
    vda: str | None = None  # a VDA 5050 vehicle's manufacturer/serialNumber (docs/VDA5050.md)


@dataclass(frozen=True)
class RegistrationOutcome:
    accepted: bool
    reason: str | None      # None when accepted; else a register.rejected reason (docs/PROTOCOL.md, Registration)
    message: str
    vehicle_id: str
    fleet_id: str | None = None
    secret: str | None = None       # the device secret (accepted without a CSR); shown once, never logged
    replayed: bool = False          # the same request was answered before: same secret (or certificate) again
    rotated: bool = False           # the vehicle had a secret or certificate before; it no longer works
    certificate_pem: str | None = None          # the issued certificate (accepted with a CSR)
    certificate_not_after: datetime | None = None


# -- enrollment tokens ----------------------------------------------------------------------------------------
def _audit(cur, actor_type: str, actor_id: str | None, action: str, vehicle_id: str, detail: dict) -> None:
    cur.execute("INSERT INTO audit_log (actor_type, actor_id, action, target_type, target_id, detail) "
                "VALUES (%s, %s, %s, 'vehicle', %s, %s)", (actor_type, actor_id, action, vehicle_id, detail))


def _insert_token(cur, key: str, vehicle_id: str, actor_id: str | None, ttl_s: int) -> tuple[str, datetime]:
    token = credentials.new_enrollment_token()
    cur.execute("INSERT INTO enrollment_tokens (vehicle_id, token_hash, expires_at, created_by) "
                "VALUES (%s, %s, now() + make_interval(secs => %s), %s) RETURNING expires_at",
                (vehicle_id, credentials.keyed_hash(key, token), ttl_s, actor_id))
    return token, cur.fetchone()["expires_at"]


def _withdraw_open_tokens(cur, vehicle_id: str, reason: str) -> int:
    cur.execute("UPDATE enrollment_tokens SET revoked_at = now(), revoked_reason = %s "
                "WHERE vehicle_id = %s AND used_at IS NULL AND revoked_at IS NULL", (reason, vehicle_id))
    return cur.rowcount


def _lock_vehicle(cur, vehicle_id: str) -> dict:
    cur.execute("SELECT id, fleet_id, status FROM vehicles WHERE id = %s FOR UPDATE", (vehicle_id,))
    row = cur.fetchone()
    if row is None:
        raise VehicleNotFound(f"no such vehicle: {vehicle_id}")
    return row


def create_vehicle(cur, key: str, *, vehicle_id: str, fleet_id: str, name: str | None = None,
                   model: str | None = None, metadata: dict | None = None, actor_type: str = "operator",
                   actor_id: str | None = None, token_ttl_s: int = DEFAULT_TOKEN_TTL_S,
                   vda5050: dict | None = None) -> Enrollment:
    """A new ``pending`` vehicle and its first enrollment token. ``vda5050`` (manufacturer, serial_number,
    origin_lat, origin_lon, map_id): it speaks VDA 5050 (docs/VDA5050.md) under that identity."""
    if not topics.is_vehicle_id(vehicle_id):
        raise RegistryError(f"not a valid vehicle id: {vehicle_id!r}")
    cur.execute("SELECT 1 FROM fleets WHERE id = %s", (fleet_id,))
    if cur.fetchone() is None:
        raise FleetNotFound(f"no such fleet: {fleet_id}")
    cur.execute("INSERT INTO vehicles (id, fleet_id, name, model, metadata) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO NOTHING", (vehicle_id, fleet_id, name, model, metadata or {}))
    if cur.rowcount != 1:
        raise VehicleIdUnavailable(f"the vehicle id {vehicle_id} is not available; choose another")
    if vda5050 is not None:
        cur.execute("INSERT INTO vda5050_vehicles (vehicle_id, manufacturer, serial_number, map_id, origin_lat, "
                    "origin_lon) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (manufacturer, serial_number) DO NOTHING",
                    (vehicle_id, vda5050["manufacturer"], vda5050["serial_number"], vda5050.get("map_id") or "map",
                     vda5050["origin_lat"], vda5050["origin_lon"]))
        if cur.rowcount != 1:
            raise VdaIdentityTaken(f"another vehicle is {vda5050['manufacturer']}/{vda5050['serial_number']}")
    token, expires_at = _insert_token(cur, key, vehicle_id, actor_id, token_ttl_s)
    _audit(cur, actor_type, actor_id, "vehicle.create", vehicle_id,
           {"fleet_id": fleet_id, "token_expires_at": expires_at.isoformat(),
            **({"vda5050": vda5050} if vda5050 else {})})
    return Enrollment(vehicle_id, fleet_id, token, expires_at)


def create_vehicles_bulk(cur, key: str, *, fleet_id: str, vehicle_ids: list[str], actor_type: str = "operator",
                         actor_id: str | None = None, token_ttl_s: int = DEFAULT_TOKEN_TTL_S) -> list[Enrollment]:
    """Many new vehicles with a token each, all or nothing (an existing id aborts the whole batch)."""
    return [create_vehicle(cur, key, vehicle_id=vid, fleet_id=fleet_id, actor_type=actor_type, actor_id=actor_id,
                           token_ttl_s=token_ttl_s) for vid in vehicle_ids]


def issue_enrollment_token(cur, key: str, vehicle_id: str, *, actor_type: str = "operator",
                           actor_id: str | None = None, token_ttl_s: int = DEFAULT_TOKEN_TTL_S,
                           readmit: bool = False) -> Enrollment:
    """A fresh token for re-registration (secret rotation) or, with ``readmit``, for re-admitting a revoked vehicle.

    The vehicle's other unused tokens stop working. A decommissioned vehicle gets none; a revoked one only when
    ``readmit`` says so (VehicleRevoked otherwise, naming who revoked it and why).
    """
    vehicle = _lock_vehicle(cur, vehicle_id)
    if vehicle["status"] == "decommissioned":
        raise VehicleStateConflict(f"vehicle {vehicle_id} is decommissioned; it cannot be enrolled again")
    if vehicle["status"] == "revoked" and not readmit:
        # the revocation that made it revoked (a repeated revoke is audited too, maybe without a reason)
        cur.execute("SELECT actor_id, detail ->> 'reason' AS reason FROM audit_log "
                    "WHERE target_type = 'vehicle' AND target_id = %s AND action = 'vehicle.revoke' "
                    "AND detail ->> 'previous_status' IS DISTINCT FROM 'revoked' "
                    "ORDER BY id DESC LIMIT 1", (vehicle_id,))
        revocation = cur.fetchone() or {"actor_id": None, "reason": None}
        raise VehicleRevoked(f"vehicle {vehicle_id} was revoked by {revocation['actor_id'] or 'an operator'}"
                             f"{' (' + revocation['reason'] + ')' if revocation['reason'] else ''}; "
                             "only an explicit re-admission (readmit) issues it a new token")
    superseded = _withdraw_open_tokens(cur, vehicle_id, "superseded")
    token, expires_at = _insert_token(cur, key, vehicle_id, actor_id, token_ttl_s)
    _audit(cur, actor_type, actor_id, "vehicle.enrollment_token_issue", vehicle_id,
           {"status": vehicle["status"], "superseded": superseded, "token_expires_at": expires_at.isoformat(),
            "readmits_revoked": vehicle["status"] == "revoked"})
    return Enrollment(vehicle_id, vehicle["fleet_id"], token, expires_at)


# -- authentication (every MQTT CONNECT) ----------------------------------------------------------------------
def verify_credentials(cur, key: str, clientid: str, username: str, password: str) -> AuthnDecision:
    """Who may connect: an active vehicle with its device secret, or an enrolling one with its token.

    One database round trip (``vehicle_authn_lookup``) and one HMAC; constant-time comparison.

    The client id decides which credential is acceptable: the vehicle id takes only the device secret, the
    vehicle's enrollment client id (``topics.enrollment_client_id``) only an enrollment token. An enrollment token
    therefore never opens — nor takes over — the vehicle's own persistent session: EMQX 5.10's HTTP authn answer
    cannot discard a session or override the client id (emqx_authn_http.erl ``extract_auth_data/2`` reads
    ``is_superuser``, ``client_attrs``, ``expire_at`` and ``acl`` only), so the separation is by client id,
    as AWS IoT's fleet provisioning connects with a claim identity distinct from the thing's.
    """
    if not topics.is_vehicle_id(username):
        return AuthnDecision(False, "invalid_username")
    if clientid == username:
        enrolling_client = False
    elif topics.is_enrollment_client_of(clientid, username):
        enrolling_client = True
    else:
        return AuthnDecision(False, "clientid_mismatch")
    if not password:
        return AuthnDecision(False, "missing_password")
    password_hash = credentials.keyed_hash(key, password)
    cur.execute("SELECT * FROM vehicle_authn_lookup(%s, %s)", (username, password_hash))
    row = cur.fetchone()
    if row is None:
        return AuthnDecision(False, "unknown_vehicle")
    status, fleet_id = row["status"], row["fleet_id"]
    if status == "decommissioned":
        return AuthnDecision(False, "vehicle_decommissioned")
    if row["secret_hash"] is not None and hmac.compare_digest(password_hash, bytes(row["secret_hash"])):
        if enrolling_client:
            return AuthnDecision(False, "device_secret_on_enrollment_client")
        if status != "active":
            return AuthnDecision(False, f"vehicle_{status}")
        vda = (topics.vda_identity(row["vda_manufacturer"], row["vda_serial_number"])
               if row["vda_manufacturer"] else None)
        return AuthnDecision(True, "device_secret", ROLE_VEHICLE, fleet_id, vda)
    if row["token_vehicle_id"] is None:
        # Neither the active secret nor any token: a wrong, rotated or revoked secret.
        return AuthnDecision(False, "vehicle_revoked" if status == "revoked" and row["secret_hash"] is None
                             else "bad_password")
    if row["token_vehicle_id"] != username:
        return AuthnDecision(False, "token_foreign")
    if row["token_used"]:
        return AuthnDecision(False, "token_used")
    if row["token_revoked"]:
        return AuthnDecision(False, "token_revoked")
    if row["token_expired"]:
        return AuthnDecision(False, "token_expired")
    if not enrolling_client:
        return AuthnDecision(False, "token_on_vehicle_client")
    return AuthnDecision(True, "enrollment_token", ROLE_ENROLLING, fleet_id)


def verify_certificate(cur, clientid: str, username: str, common_name: str, certificate_der: bytes) -> AuthnDecision:
    """Who may connect with a client certificate (the broker's mTLS listener verified its chain to the fleet CA).

    The certificate's CN is the vehicle id, and the client id and username must both be that id (no enrollment
    client: a vehicle enrolls on a listener without client certificates). No password: the TLS handshake proved the
    key. The certificate must be the vehicle's active one, by SHA-256 fingerprint, so a rotated or revoked
    certificate is refused before its ``not_after``, and the vehicle must be ``active`` — revocation refuses it as
    it refuses a device secret. One round trip (``vehicle_cert_authn_lookup``).
    """
    if not topics.is_vehicle_id(common_name):
        return AuthnDecision(False, "certificate_cn_invalid")
    if clientid != common_name:
        return AuthnDecision(False, "clientid_not_certificate_cn")
    if username != common_name:
        return AuthnDecision(False, "username_not_certificate_cn")
    if not certificate_der:
        return AuthnDecision(False, "certificate_missing")
    cur.execute("SELECT * FROM vehicle_cert_authn_lookup(%s, %s)",
                (common_name, certificates.fingerprint(certificate_der)))
    row = cur.fetchone()
    if row is None:
        return AuthnDecision(False, "unknown_vehicle")
    status = row["status"]
    if status in ("revoked", "decommissioned"):
        return AuthnDecision(False, f"vehicle_{status}")
    if row["cert_vehicle_id"] is None:
        return AuthnDecision(False, "certificate_unknown")      # signed by the CA, but not issued by registration
    if row["cert_vehicle_id"] != common_name:
        return AuthnDecision(False, "certificate_foreign")
    if row["cert_revoked"]:
        return AuthnDecision(False, "certificate_revoked")      # rotated: a newer registration replaced it
    if row["cert_expired"]:
        return AuthnDecision(False, "certificate_expired")
    if status != "active":
        return AuthnDecision(False, f"vehicle_{status}")
    vda = (topics.vda_identity(row["vda_manufacturer"], row["vda_serial_number"])
           if row["vda_manufacturer"] else None)
    return AuthnDecision(True, "certificate", ROLE_VEHICLE, row["fleet_id"], vda)


# -- registration ---------------------------------------------------------------------------------------------
_REASON_TEXT = {
    "token_invalid": "the enrollment token is not valid for this vehicle",
    "token_expired": "the enrollment token has expired; ask an operator for a new one",
    "token_used": "the enrollment token was already used",
    "vehicle_revoked": "this vehicle's credentials were revoked",
    "vehicle_decommissioned": "this vehicle was decommissioned",
    "malformed": "the registration request is malformed",
    "csr_invalid": "the certificate signing request cannot be signed",
    "certificates_unavailable": "this backend issues no certificates; register without a CSR",
}


def rejected(vehicle_id: str, reason: str, message: str | None = None) -> RegistrationOutcome:
    return RegistrationOutcome(False, reason, message or _REASON_TEXT[reason], vehicle_id)


def register(cur, key: str, *, vehicle_id: str, enrollment_token: str, request_msg_id: str,
             model: str | None = None, sw_version: str | None = None,
             sheet: capabilities.Sheet | None = None,
             replay_window_s: int = DEFAULT_REPLAY_WINDOW_S,
             issue_certificate: Callable[[], certificates.IssuedCertificate] | None = None) -> RegistrationOutcome:
    """Turn an enrollment token into the vehicle's device secret — or, with ``issue_certificate`` (the request
    carried a CSR, checked by the caller), into its certificate — atomically.

    The vehicle and token rows are locked first, so of two concurrent requests with one token exactly one gets a
    secret; the other waits, then sees the token used. A repeat of the *same* request (same ``msg_id``, e.g. a
    broker retry after the answer could not be published) within ``replay_window_s`` gets the same answer again,
    as long as that secret is still the vehicle's active one: the secret is derived from the request, never
    stored. A certificate is public and stored whole: its replay re-sends the stored one.
    """
    # Lock order everywhere: vehicle, then its tokens, then its credentials (no deadlock with token issuing).
    try:
        vehicle = _lock_vehicle(cur, vehicle_id)
    except VehicleNotFound:
        return rejected(vehicle_id, "token_invalid")
    token_hash = credentials.keyed_hash(key, enrollment_token)
    cur.execute("""
        SELECT t.id, t.vehicle_id, t.expires_at <= now() AS expired, t.used_at IS NOT NULL AS used,
               t.revoked_at IS NOT NULL AS revoked, t.request_msg_id, t.credential_id,
               t.used_at > now() - make_interval(secs => %s) AS in_replay_window
          FROM enrollment_tokens t WHERE t.token_hash = %s FOR UPDATE""", (replay_window_s, token_hash))
    token = cur.fetchone()
    if token is None or token["vehicle_id"] != vehicle_id:
        return rejected(vehicle_id, "token_invalid")
    if vehicle["status"] == "decommissioned":
        return rejected(vehicle_id, "vehicle_decommissioned")
    if token["used"]:
        return _replay(cur, key, token, vehicle, enrollment_token, request_msg_id)
    if token["revoked"]:
        return rejected(vehicle_id, "vehicle_revoked" if vehicle["status"] == "revoked" else "token_invalid")
    if token["expired"]:
        return rejected(vehicle_id, "token_expired")

    # One identity at a time: the new secret or certificate replaces whatever the vehicle had.
    cur.execute("UPDATE device_credentials SET revoked_at = now(), revoked_reason = 'rotated' "
                "WHERE vehicle_id = %s AND revoked_at IS NULL", (vehicle_id,))
    rotated = cur.rowcount > 0
    cur.execute("UPDATE vehicle_certificates SET revoked_at = now(), revoked_reason = 'rotated' "
                "WHERE vehicle_id = %s AND revoked_at IS NULL", (vehicle_id,))
    rotated = rotated or cur.rowcount > 0
    secret: str | None = None
    credential_id: int | None = None
    issued: certificates.IssuedCertificate | None = None
    identity: dict = {}
    if issue_certificate is not None:
        issued = issue_certificate()
        cur.execute("INSERT INTO vehicle_certificates (vehicle_id, serial_number, fingerprint_sha256, not_before, "
                    "not_after, certificate_pem, enrollment_token_id) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "RETURNING id", (vehicle_id, issued.serial_hex, issued.fingerprint, issued.not_before,
                                     issued.not_after, issued.pem, token["id"]))
        identity = {"identity": "certificate", "certificate_id": cur.fetchone()["id"],
                    "certificate_serial": issued.serial_hex, "certificate_not_after": issued.not_after.isoformat()}
    else:
        secret = credentials.derive_device_secret(key, vehicle_id, request_msg_id, enrollment_token)
        cur.execute("INSERT INTO device_credentials (vehicle_id, secret_hash) VALUES (%s, %s) RETURNING id",
                    (vehicle_id, credentials.keyed_hash(key, secret)))
        credential_id = cur.fetchone()["id"]
        identity = {"identity": "device_secret", "credential_id": credential_id}
    cur.execute("UPDATE enrollment_tokens SET used_at = now(), request_msg_id = %s, credential_id = %s "
                "WHERE id = %s", (request_msg_id, credential_id, token["id"]))
    cur.execute("""
        UPDATE vehicles SET status = 'active', registered_at = now(), revoked_at = NULL,
               model = COALESCE(%s, model),
               metadata = CASE WHEN %s::text IS NULL THEN metadata
                               ELSE metadata || jsonb_build_object('sw_version', %s::text) END
         WHERE id = %s""", (model, sw_version, sw_version, vehicle_id))
    capabilities_version = capabilities.store(cur, vehicle_id, sheet, "registration") if sheet else None
    _audit(cur, "vehicle", vehicle_id, "vehicle.register", vehicle_id,
           {"request_msg_id": request_msg_id, "previous_status": vehicle["status"], "rotated": rotated,
            **identity, "model": model, "sw_version": sw_version, "capabilities_version": capabilities_version})
    return RegistrationOutcome(True, None, "registered", vehicle_id, vehicle["fleet_id"], secret, False, rotated,
                               issued.pem if issued else None, issued.not_after if issued else None)


def _replay(cur, key: str, token: dict, vehicle: dict, enrollment_token: str,
            request_msg_id: str) -> RegistrationOutcome:
    """The token was used: by this very request (re-send the same secret) or by another one (token_used)."""
    vehicle_id = vehicle["id"]
    if token["request_msg_id"] != request_msg_id or not token["in_replay_window"] or vehicle["status"] != "active":
        return rejected(vehicle_id, "token_used")
    if token["credential_id"] is None:
        # this request was answered with a certificate: the same one again, while it is the vehicle's active one
        cur.execute("SELECT certificate_pem, not_after FROM vehicle_certificates "
                    "WHERE enrollment_token_id = %s AND revoked_at IS NULL", (token["id"],))
        issued = cur.fetchone()
        if issued is None:
            return rejected(vehicle_id, "token_used")
        return RegistrationOutcome(True, None, "registered", vehicle_id, vehicle["fleet_id"], None, True, False,
                                   issued["certificate_pem"], issued["not_after"])
    cur.execute("SELECT secret_hash FROM device_credentials WHERE id = %s AND revoked_at IS NULL",
                (token["credential_id"],))
    row = cur.fetchone()
    secret = credentials.derive_device_secret(key, vehicle_id, request_msg_id, enrollment_token)
    if row is None or not hmac.compare_digest(credentials.keyed_hash(key, secret), bytes(row["secret_hash"])):
        return rejected(vehicle_id, "token_used")  # rotated or revoked since, or the server key changed
    return RegistrationOutcome(True, None, "registered", vehicle_id, vehicle["fleet_id"], secret, True, False)


# -- revocation and decommissioning ---------------------------------------------------------------------------
def revoke_vehicle(cur, vehicle_id: str, *, actor_type: str, actor_id: str | None,
                   reason: str | None = None) -> dict:
    """Withdraw the device secret and every unused token; the vehicle can no longer connect.

    Idempotent: revoking a revoked vehicle changes nothing but is audited again (the caller kicks again).
    Returns ``{"status", "changed"}``. The live session must then be kicked: ``disconnect``.
    """
    vehicle = _lock_vehicle(cur, vehicle_id)
    if vehicle["status"] == "decommissioned":
        raise VehicleStateConflict(f"vehicle {vehicle_id} is decommissioned")
    cur.execute("UPDATE device_credentials SET revoked_at = now(), revoked_reason = 'revoked' "
                "WHERE vehicle_id = %s AND revoked_at IS NULL", (vehicle_id,))
    credentials_revoked = cur.rowcount
    cur.execute("UPDATE vehicle_certificates SET revoked_at = now(), revoked_reason = 'revoked' "
                "WHERE vehicle_id = %s AND revoked_at IS NULL", (vehicle_id,))
    certificates_revoked = cur.rowcount
    tokens_revoked = _withdraw_open_tokens(cur, vehicle_id, "vehicle revoked")
    changed = vehicle["status"] != "revoked"
    if changed:
        cur.execute("UPDATE vehicles SET status = 'revoked', revoked_at = now() WHERE id = %s", (vehicle_id,))
    _audit(cur, actor_type, actor_id, "vehicle.revoke", vehicle_id,
           {"reason": reason, "previous_status": vehicle["status"], "credentials_revoked": credentials_revoked,
            "certificates_revoked": certificates_revoked, "tokens_revoked": tokens_revoked})
    return {"status": "revoked", "changed": changed}


def decommission_vehicle(cur, vehicle_id: str, *, actor_type: str, actor_id: str | None,
                         reason: str | None = None) -> dict:
    """Retire a vehicle for good: credentials and tokens withdrawn, never enrolled again. Idempotent."""
    vehicle = _lock_vehicle(cur, vehicle_id)
    cur.execute("UPDATE device_credentials SET revoked_at = now(), revoked_reason = 'decommissioned' "
                "WHERE vehicle_id = %s AND revoked_at IS NULL", (vehicle_id,))
    cur.execute("UPDATE vehicle_certificates SET revoked_at = now(), revoked_reason = 'decommissioned' "
                "WHERE vehicle_id = %s AND revoked_at IS NULL", (vehicle_id,))
    _withdraw_open_tokens(cur, vehicle_id, "vehicle decommissioned")
    changed = vehicle["status"] != "decommissioned"
    if changed:
        cur.execute("UPDATE vehicles SET status = 'decommissioned', decommissioned_at = now() WHERE id = %s",
                    (vehicle_id,))
        _audit(cur, actor_type, actor_id, "vehicle.decommission", vehicle_id,
               {"reason": reason, "previous_status": vehicle["status"]})
    return {"status": "decommissioned", "changed": changed}


def disconnect(emqx: EmqxApi, vehicle_id: str) -> str:
    """Kick the vehicle's live session and clear its authorization cache, after a revoke or decommission.

    Returns ``kicked``, ``not_connected`` or ``broker_unreachable`` (then the database already refuses new
    connections, but the live session stays until the call is repeated).
    """
    try:
        kicked = emqx.kick(vehicle_id)
        emqx.clear_authz_cache(vehicle_id)
    except EmqxApiError as exc:
        log_event(log, "registry.kick_failed", logging.ERROR, vehicle=vehicle_id, error=str(exc))
        return "broker_unreachable"
    log_event(log, "registry.kicked" if kicked else "registry.kick_not_connected", vehicle=vehicle_id)
    return "kicked" if kicked else "not_connected"
