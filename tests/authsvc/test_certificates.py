"""Certificate identity in authsvc: CSRs in registration requests (fleetcore/certificates.py) and authn by client
certificate (``cert_common_name`` / ``cert_pem`` in the authn body, fleetcore/registry.py ``verify_certificate``).

The registration calls are the broker's HTTP action (rule outputs), as in test_registration.py; a CSR that cannot
be signed is a handled request — HTTP 200 with the JSON summary ``rejected`` / ``csr_invalid`` (the vehicle gets
``register.rejected`` with the reason and what is wrong) — and changes nothing. The end-to-end path over TLS is
tests/test_certificate_identity_e2e.py.
"""
from __future__ import annotations

import base64
import datetime
import uuid

import pytest
from cryptography import x509

from authsvc import create_app
from authsvc.config import AuthsvcConfig
from fleetcore import certificates, envelope, registry
from fleetcore.config import ConfigError
from tests.authsvc.conftest import audit_actions, credential_rows, registration_summary, vehicle_row
from tests.conftest import free_port
from tests.support import certs


def certificate_rows(stack_db, vehicle_id: str) -> list[dict]:
    with stack_db.transaction() as cur:
        cur.execute("SELECT * FROM vehicle_certificates WHERE vehicle_id = %s ORDER BY id", (vehicle_id,))
        return cur.fetchall()


def authn_with_certificate(broker, clientid: str, common_name: str, certificate_pem: str | None,
                           username: str | None = None, cert_b64: str | None = None) -> dict:
    """authn as EMQX calls it on the mTLS listener: the CN and base64 DER of the verified certificate."""
    if cert_b64 is None:
        cert_b64 = base64.b64encode(certs.der_of(certificate_pem)).decode() if certificate_pem else ""
    response = broker.post("/mqtt/authn", {"clientid": clientid, "username": username or clientid, "password": "",
                                           "peerhost": "127.0.0.1", "cert_common_name": common_name,
                                           "cert_pem": cert_b64})
    assert response.status_code == 200, response.text
    return response.json()


def issued_certificate(stack_db, vehicle_id: str) -> str:
    [row] = [r for r in certificate_rows(stack_db, vehicle_id) if r["revoked_at"] is None]
    return row["certificate_pem"]


# -- CSR validation (no database) -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,make,message", [
    ("garbage", lambda key, vid: "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----",
     "not a PEM certificate signing request"),
    ("not_pem", lambda key, vid: "hello", "not a PEM certificate signing request"),
    ("empty", lambda key, vid: "", "must be a PEM certificate signing request"),
    ("not_a_string", lambda key, vid: 7, "must be a PEM certificate signing request"),
    ("oversized", lambda key, vid: "A" * (certificates.MAX_CSR_CHARS + 1), "at most"),
    ("bad_signature", lambda key, vid: certs.tampered_csr_pem(key, vid), "signature does not verify"),
    ("other_cn", lambda key, vid: certs.csr_pem(key, "someone-else"), "exactly one CN"),
    ("two_cns", lambda key, vid: certs.csr_pem(key, vid, vid), "exactly one CN"),
    ("no_cn", lambda key, vid: certs.csr_pem(key), "exactly one CN"),
    ("small_rsa", lambda key, vid: certs.csr_pem(certs.new_key("rsa", 1024), vid), "1024"),
])
def test_parse_csr_refuses(kind, make, message):
    key = certs.new_key()
    with pytest.raises(certificates.InvalidCsr, match=message):
        certificates.parse_csr(make(key, "veh-1"), "veh-1")


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_parse_csr_accepts_and_the_ca_issues_a_client_certificate(kind, tmp_path):
    key = certs.new_key(kind)
    csr = certificates.parse_csr(certs.csr_pem(key, "veh-1"), "veh-1")
    assert certificates.create_ca(tmp_path) is True and certificates.create_ca(tmp_path) is False
    assert (tmp_path / certificates.CA_KEY_FILE).stat().st_mode & 0o777 == 0o600
    ca = certificates.FleetCA.load(tmp_path / certificates.CA_CERT_FILE, tmp_path / certificates.CA_KEY_FILE)
    now = datetime.datetime.now(datetime.UTC)
    issued = ca.issue(csr, "veh-1", datetime.timedelta(days=7), now=now)
    cert = x509.load_pem_x509_certificate(issued.pem.encode())
    assert cert.subject.rfc4514_string() == "CN=veh-1"
    assert cert.issuer == ca.certificate.subject
    assert datetime.timedelta(0) <= now + datetime.timedelta(days=7) - issued.not_after < datetime.timedelta(seconds=1)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    cert.verify_directly_issued_by(ca.certificate)
    assert issued.fingerprint == certificates.fingerprint(certs.der_of(issued.pem))


# -- registration with a CSR ----------------------------------------------------------------------------------
def test_registration_with_a_csr_issues_a_certificate_and_no_secret(broker, broker_running, new_vehicle, stack_db,
                                                                   stack):
    vehicle = new_vehicle()
    key = certs.new_key()
    summary = registration_summary(broker.register(vehicle.id, vehicle.token, csr=certs.csr_pem(key, vehicle.id)),
                                   broker_running)
    assert (summary["result"], summary["rotated"]) == ("accepted", False)
    assert vehicle_row(stack_db, vehicle.id)["status"] == "active"
    assert credential_rows(stack_db, vehicle.id) == [], "no device secret"
    [row] = certificate_rows(stack_db, vehicle.id)
    assert row["revoked_at"] is None and row["not_after"] - row["created_at"] > datetime.timedelta(days=364)
    assert row["certificate_pem"] not in str(summary), "the HTTP answer to the broker carries no certificate"
    answer = authn_with_certificate(broker, vehicle.id, vehicle.id, row["certificate_pem"])
    assert answer["result"] == "allow" and answer["client_attrs"]["role"] == "vehicle"
    assert broker.authn_result(vehicle.id, "") == {"result": "deny"}, "no password login for it"


@pytest.mark.parametrize("make", [
    lambda key, vid: "garbage",
    lambda key, vid: certs.csr_pem(key, "other-vehicle"),
    lambda key, vid: certs.tampered_csr_pem(key, vid),
], ids=["garbage", "other_cn", "bad_signature"])
def test_a_csr_that_cannot_be_signed_is_rejected_and_changes_nothing(broker, broker_running, new_vehicle, stack_db,
                                                                     make):
    vehicle = new_vehicle()
    response = broker.register(vehicle.id, vehicle.token, csr=make(certs.new_key(), vehicle.id))
    assert response.headers["Content-Type"].startswith("application/json")
    summary = registration_summary(response, broker_running)
    assert (summary["result"], summary["reason"]) == ("rejected", "csr_invalid")
    assert vehicle_row(stack_db, vehicle.id)["status"] == "pending", "the token is not used up"
    assert certificate_rows(stack_db, vehicle.id) == [] and credential_rows(stack_db, vehicle.id) == []
    assert "vehicle.register_rejected" in audit_actions(stack_db, vehicle.id)
    with stack_db.transaction() as cur:
        cur.execute("SELECT detail FROM audit_log WHERE target_id = %s AND action = 'vehicle.register_rejected'",
                    (vehicle.id,))
        assert cur.fetchone()["detail"]["reason"] == "csr_invalid"


def test_a_retry_of_the_same_request_gets_the_same_certificate(broker, broker_running, new_vehicle, stack_db):
    vehicle = new_vehicle()
    key, msg_id = certs.new_key(), str(uuid.uuid4())
    csr = certs.csr_pem(key, vehicle.id)
    first = registration_summary(broker.register(vehicle.id, vehicle.token, msg_id, csr=csr), broker_running)
    again = registration_summary(broker.register(vehicle.id, vehicle.token, msg_id, csr=csr), broker_running)
    assert (first["result"], again["result"], again["replayed"]) == ("accepted", "accepted", True)
    assert len(certificate_rows(stack_db, vehicle.id)) == 1, "no second certificate"


def test_reregistering_replaces_the_certificate_and_a_secret_replaces_it_too(broker, broker_running, new_vehicle,
                                                                             stack_db, device_key):
    vehicle = new_vehicle()
    registration_summary(broker.register(vehicle.id, vehicle.token, csr=certs.csr_pem(certs.new_key(), vehicle.id)),
                         broker_running)
    first = issued_certificate(stack_db, vehicle.id)
    with stack_db.transaction() as cur:
        token = registry.issue_enrollment_token(cur, device_key, vehicle.id, actor_type="system").token
    summary = registration_summary(broker.register(vehicle.id, token, csr=certs.csr_pem(certs.new_key(), vehicle.id)),
                                   broker_running)
    assert summary["rotated"] is True
    second = issued_certificate(stack_db, vehicle.id)
    assert authn_with_certificate(broker, vehicle.id, vehicle.id, first) == {"result": "deny"}
    assert authn_with_certificate(broker, vehicle.id, vehicle.id, second)["result"] == "allow"
    with stack_db.transaction() as cur:        # back to a device secret: the certificate stops working
        token = registry.issue_enrollment_token(cur, device_key, vehicle.id, actor_type="system").token
    assert registration_summary(broker.register(vehicle.id, token), broker_running)["rotated"] is True
    assert authn_with_certificate(broker, vehicle.id, vehicle.id, second) == {"result": "deny"}
    assert [r["revoked_reason"] for r in certificate_rows(stack_db, vehicle.id)] == ["rotated", "rotated"]


# -- authn with a client certificate ------------------------------------------------------------------------------
@pytest.fixture
def cert_vehicle(broker, broker_running, new_vehicle, stack_db):
    """An active vehicle provisioned by CSR: (id, its certificate PEM)."""
    vehicle = new_vehicle()
    registration_summary(broker.register(vehicle.id, vehicle.token, csr=certs.csr_pem(certs.new_key(), vehicle.id)),
                         broker_running)
    return vehicle.id, issued_certificate(stack_db, vehicle.id)


@pytest.mark.parametrize("case", ["clientid", "username", "enroll_clientid", "not_a_vehicle_id", "no_der",
                                  "bad_base64", "other_certificate"])
def test_authn_by_certificate_refuses(broker, cert_vehicle, stack, case):
    vid, pem = cert_vehicle
    clientid, username, cn, cert_b64 = vid, vid, vid, None
    if case == "clientid":
        clientid = "someone-else"
    elif case == "username":
        username = "someone-else"
    elif case == "enroll_clientid":
        clientid = f"_enroll-{vid}"
    elif case == "not_a_vehicle_id":
        clientid = username = cn = "_fleet"
    elif case == "no_der":
        cert_b64 = ""
    elif case == "bad_base64":
        cert_b64 = "!!not base64!!"
    elif case == "other_certificate":   # signed by the fleet CA for this CN, but never issued by registration
        pem = certs.self_signed_client_cert(stack.tls_dir, certs.new_key(), vid)
    assert authn_with_certificate(broker, clientid, cn, pem, username=username, cert_b64=cert_b64) == {
        "result": "deny"}


@pytest.mark.parametrize("action", ["revoke", "decommission", "expire"])
def test_authn_by_certificate_refuses_a_revoked_decommissioned_or_expired_one(broker, cert_vehicle, stack_db,
                                                                              action):
    vid, pem = cert_vehicle
    assert authn_with_certificate(broker, vid, vid, pem)["result"] == "allow"
    with stack_db.transaction() as cur:
        if action == "revoke":
            registry.revoke_vehicle(cur, vid, actor_type="operator", actor_id="tests")
        elif action == "decommission":
            registry.decommission_vehicle(cur, vid, actor_type="operator", actor_id="tests")
        else:
            cur.execute("UPDATE vehicle_certificates SET not_after = now() - interval '1 s', "
                        "not_before = now() - interval '1 day' WHERE vehicle_id = %s", (vid,))
    assert authn_with_certificate(broker, vid, vid, pem) == {"result": "deny"}
    if action != "expire":
        assert [r["revoked_reason"] for r in certificate_rows(stack_db, vid)] == [
            "revoked" if action == "revoke" else "decommissioned"]


# -- configuration: the CA files and the validity --------------------------------------------------------------
def authsvc_app(stack, **settings):
    """An authsvc app on the stack's database whose broker is unreachable: a registration is decided and committed,
    then answered 503 because its answer cannot be published (tests/authsvc/test_registration.py)."""
    return create_app(AuthsvcConfig(database_url=stack.database_url, broker_token="t" * 20,
                                    device_secret_key=stack.secrets["FLEET_DEVICE_SECRET_KEY"],
                                    emqx_api_url=f"http://127.0.0.1:{free_port()}", emqx_api_key="fleet",
                                    emqx_api_secret="s" * 20, emqx_timeout_s=1.0, **settings))


def register_through(app, vehicle, csr: str) -> dict:
    client = app.test_client()
    message = envelope.message({"enrollment_token": vehicle.token, "csr": csr}, seq=1)
    payload = base64.b64encode(envelope.encode(message)).decode()
    response = client.post("/mqtt/register", json={
        "clientid": f"_enroll-{vehicle.id}", "username": vehicle.id, "payload_b64": payload,
        "topic": f"fleet/v1/{vehicle.id}/register/request", "publish_received_at": 1},
        headers={"x-fleet-broker-token": "t" * 20})
    assert response.status_code == 503 and response.json["code"] == "answer_not_published", response.json
    return response.json["details"]


def test_the_validity_is_the_configured_one(stack, new_vehicle, stack_db, tmp_path):
    certificates.create_ca(tmp_path)
    app = authsvc_app(stack, fleet_ca_cert_file=str(tmp_path / certificates.CA_CERT_FILE),
                      fleet_ca_key_file=str(tmp_path / certificates.CA_KEY_FILE), certificate_validity_days=2)
    vehicle = new_vehicle()
    assert register_through(app, vehicle, certs.csr_pem(certs.new_key(), vehicle.id))["result"] == "accepted"
    [row] = certificate_rows(stack_db, vehicle.id)
    assert row["not_after"] - row["not_before"] == datetime.timedelta(days=2) + certificates.CLOCK_SKEW


def test_without_a_fleet_ca_a_csr_is_rejected_certificates_unavailable(stack, new_vehicle, stack_db):
    vehicle = new_vehicle()
    details = register_through(authsvc_app(stack), vehicle, certs.csr_pem(certs.new_key(), vehicle.id))
    assert (details["result"], details["reason"]) == ("rejected", "certificates_unavailable")
    assert vehicle_row(stack_db, vehicle.id)["status"] == "pending"


@pytest.mark.parametrize("settings,message", [
    ({"certificate_validity_days": 0}, "AUTHSVC_CERTIFICATE_VALIDITY_DAYS"),
    ({"certificate_validity_days": 3651}, "AUTHSVC_CERTIFICATE_VALIDITY_DAYS"),
    ({"fleet_ca_cert_file": "/nonexistent/ca.pem"}, "set together"),
    ({"fleet_ca_cert_file": "/nonexistent/ca.pem", "fleet_ca_key_file": "/nonexistent/ca.key"}, "cannot load"),
])
def test_a_bad_ca_configuration_stops_the_start(stack, settings, message):
    with pytest.raises(ConfigError, match=message):
        authsvc_app(stack, **settings)


def test_a_certificate_that_is_not_a_ca_is_refused_as_the_fleet_ca(stack, tmp_path):
    certificates.create_ca(tmp_path / "ca")
    key = certs.new_key()
    leaf = certs.write_identity(tmp_path, "leaf", key, certs.self_signed_client_cert(tmp_path / "ca", key, "x"))
    with pytest.raises(ConfigError, match="not a CA certificate"):
        authsvc_app(stack, fleet_ca_cert_file=leaf[0], fleet_ca_key_file=leaf[1])


def test_fleetctl_fleet_ca_makes_the_ca_once(tmp_path, capsys):
    from fleetctl import cli
    assert cli.main(["fleet-ca", str(tmp_path / "fleet-ca")]) == 0
    pem, key = tmp_path / "fleet-ca" / certificates.CA_CERT_FILE, tmp_path / "fleet-ca" / certificates.CA_KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600 and pem.stat().st_mode & 0o777 == 0o644
    first = pem.read_bytes()
    assert cli.main(["fleet-ca", str(tmp_path / "fleet-ca")]) == 0 and pem.read_bytes() == first, "kept"
    assert "PRIVATE KEY" not in capsys.readouterr().out + capsys.readouterr().err, "the key is never printed"
    certificates.FleetCA.load(pem, key)
