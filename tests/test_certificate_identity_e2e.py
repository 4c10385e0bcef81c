"""Certificate identity end to end over real MQTT and TLS (docs/PROTOCOL.md, Certificate identity).

A paho vehicle registers with its enrollment token and a CSR, receives a certificate signed by the stack's fleet
CA, connects to the mTLS listener with it and no password, and publishes telemetry that lands in the database.
Refused: a certificate of another CA (TLS handshake), a certificate of the fleet CA that registration never issued
(authsvc: certificate_unknown), a client id or username that is not the certificate's CN, a revoked vehicle (its
live session kicked), and a certificate that a newer registration replaced.

Needs the whole stack and openssl (the broker's own certificate: scripts/make-certs.sh).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from fleetcore import certificates, topics
from tests.support import certs
from tests.support.database import rows
from tests.support.operators import unique
from tests.support.required import require_components, require_tool
from tests.support.vehicle import ConnectRefused, MqttVehicle, wait_for_actions_on
from tests.support.waiting import wait_until

# a certificate of the wrong CA fails the TLS handshake (an SSLError, or the socket closed before the CONNACK)
TLS_REFUSED = (ConnectRefused, OSError)


@pytest.fixture(autouse=True)
def _needs_the_whole_stack_with_tls(stack):
    require_components(stack, "authsvc", "broker", "api")
    require_tool("openssl", "the embedded stack makes its TLS listeners' broker certificate with it")
    assert (stack.tls_dir / "server.pem").exists(), "openssl is installed, yet the stack made no broker certificate"
    wait_for_actions_on((stack.config.ports.mqtt_mtls,), stack.actions.wait_processed)


class CertVehicle:
    """A vehicle with its own key, provisioned by CSR."""

    def __init__(self, operator, stack, tmp_path: Path) -> None:
        self.stack, self.operator, self.dir = stack, operator, tmp_path
        self.id = unique("cert")
        response = operator.post("/api/v1/vehicles", json={"id": self.id, "fleet_id": operator.fleet})
        assert response.status_code == 201, response.text
        self.token = response.json()["enrollment"]["token"]
        self.key = certs.new_key()
        self.files: tuple[str, str] | None = None
        self.issued = 0

    def register(self, token: str | None = None, csr: str | None = None) -> dict:
        """Enroll over plain MQTT with a CSR; the register/response envelope."""
        enrolling = MqttVehicle("127.0.0.1", self.stack.config.ports.mqtt, self.id)
        enrolling.connect_enrolling(token or self.token)
        try:
            assert enrolling.subscribe(topics.vehicle_topic(self.id, topics.Kind.REGISTER_RESPONSE)) == [1]
            request = enrolling.publish(topics.Kind.REGISTER_REQUEST, {
                "enrollment_token": token or self.token, "model": "mtls-rig",
                "csr": csr or certs.csr_pem(self.key, self.id)})
            answer = enrolling.wait_for_message(lambda m: m.topic.endswith("/register/response"), 15).json()
        finally:
            enrolling.close()
        assert answer["data"]["request_msg_id"] == request["msg_id"]
        if answer["type"] == "register.accepted":
            self.issued += 1
            self.files = certs.write_identity(self.dir, f"{self.id}-{self.issued}", self.key,
                                              answer["data"]["certificate"])
        return answer

    def mtls(self, client_id: str | None = None, username: str | None = None,
             files: tuple[str, str] | None = None) -> MqttVehicle:
        vehicle = MqttVehicle("127.0.0.1", self.stack.config.ports.mqtt_mtls, client_id or self.id)
        return vehicle.connect(None, username=username or self.id, client_id=client_id or self.id,
                               tls_ca=str(self.stack.tls_dir / "ca.pem"), tls_cert=files or self.files)


@pytest.fixture
def cert_vehicle(operator, stack, tmp_path):
    return lambda: CertVehicle(operator, stack, tmp_path)


def test_a_vehicle_provisioned_by_csr_connects_over_mtls_and_its_telemetry_is_stored(cert_vehicle, stack):
    vehicle = cert_vehicle()
    answer = vehicle.register()
    assert answer["type"] == "register.accepted", answer
    data = answer["data"]
    assert "password" not in data, "a certificate replaces the device secret"
    assert data["username"] == data["vehicle_id"] == vehicle.id
    assert data["ca_chain"] == [(stack.tls_dir / certificates.CA_CERT_FILE).read_text()]
    [stored] = rows(stack.database_url, "SELECT fingerprint_sha256, not_after, revoked_at FROM vehicle_certificates "
                                        "WHERE vehicle_id = %s", (vehicle.id,))
    assert bytes(stored["fingerprint_sha256"]) == certificates.fingerprint(certs.der_of(data["certificate"]))
    assert stored["revoked_at"] is None
    shown = vehicle.operator.get(f"/api/v1/vehicles/{vehicle.id}").json()["certificate"]
    assert shown["not_after"].startswith(data["not_after"][:19]), (shown, data["not_after"])

    client = vehicle.mtls()
    try:
        message = client.telemetry(lat=48.25, lon=11.65)
        assert rows(stack.database_url, "SELECT vehicle_id, lat FROM telemetry WHERE msg_id = %s",
                    (message["msg_id"],)) == [{"vehicle_id": vehicle.id, "lat": 48.25}]
    finally:
        client.close()


def test_a_secret_vehicle_shows_no_certificate_and_revocation_hides_it(cert_vehicle, operator, stack):
    vehicle = cert_vehicle()
    assert operator.get(f"/api/v1/vehicles/{vehicle.id}").json()["certificate"] is None, "pending: none yet"
    assert vehicle.register()["type"] == "register.accepted"
    assert operator.get(f"/api/v1/vehicles/{vehicle.id}").json()["certificate"] is not None
    assert operator.post(f"/api/v1/vehicles/{vehicle.id}/revoke", json={}).status_code == 200
    assert operator.get(f"/api/v1/vehicles/{vehicle.id}").json()["certificate"] is None


def test_a_certificate_of_another_ca_is_refused_in_the_tls_handshake(cert_vehicle, tmp_path):
    vehicle = cert_vehicle()
    assert vehicle.register()["type"] == "register.accepted"
    other_ca = tmp_path / "other-ca"
    certificates.create_ca(other_ca, "Some other CA")
    forged = certs.write_identity(tmp_path / "forged", vehicle.id, vehicle.key,
                                  certs.self_signed_client_cert(other_ca, vehicle.key, vehicle.id))
    with pytest.raises(TLS_REFUSED) as refused:
        vehicle.mtls(files=forged)
    # refused by the TLS layer, never as far as authentication (which would answer CONNACK "Not authorized")
    assert "Not authorized" not in str(refused.value), refused.value
    vehicle.mtls().close()                # its own certificate still works


def test_a_client_without_a_certificate_is_refused_in_the_tls_handshake(cert_vehicle, stack):
    """fail_if_no_peer_cert = true: a secret vehicle's way of connecting does not work on 8884."""
    vehicle = cert_vehicle()
    assert vehicle.register()["type"] == "register.accepted"
    client = MqttVehicle("127.0.0.1", stack.config.ports.mqtt_mtls, vehicle.id)
    with pytest.raises(TLS_REFUSED) as refused:
        client.connect("any-password", tls_ca=str(stack.tls_dir / "ca.pem"))
    assert "Not authorized" not in str(refused.value), refused.value


def test_a_fleet_ca_certificate_that_registration_never_issued_is_refused(cert_vehicle, stack, tmp_path):
    vehicle = cert_vehicle()
    assert vehicle.register()["type"] == "register.accepted"
    unissued = certs.write_identity(tmp_path / "unissued", vehicle.id, vehicle.key,
                                    certs.self_signed_client_cert(stack.tls_dir, vehicle.key, vehicle.id))
    with pytest.raises(ConnectRefused, match="Not authorized"):
        vehicle.mtls(files=unissued)


@pytest.mark.parametrize("who", ["client_id", "username"])
def test_a_client_id_or_username_other_than_the_certificate_cn_is_refused(cert_vehicle, who):
    vehicle, other = cert_vehicle(), cert_vehicle()
    assert vehicle.register()["type"] == "register.accepted"
    assert other.register()["type"] == "register.accepted"
    with pytest.raises(ConnectRefused, match="Not authorized"):
        vehicle.mtls(**{who: other.id})


def test_a_revoked_vehicle_is_kicked_and_refused(cert_vehicle, operator):
    vehicle = cert_vehicle()
    assert vehicle.register()["type"] == "register.accepted"
    client = vehicle.mtls()
    try:
        response = operator.post(f"/api/v1/vehicles/{vehicle.id}/revoke", json={"reason": "stolen"})
        assert response.status_code == 200, response.text
        wait_until(lambda: not client.connected, timeout=5, message="the revoked vehicle is still connected")
    finally:
        client.close()
    with pytest.raises(ConnectRefused, match="Not authorized"):
        vehicle.mtls()


def test_registering_again_replaces_the_certificate(cert_vehicle, operator, tmp_path):
    vehicle = cert_vehicle()
    assert vehicle.register()["type"] == "register.accepted"
    old_files = vehicle.files
    response = operator.post(f"/api/v1/vehicles/{vehicle.id}/enrollment")
    assert response.status_code in (200, 201), response.text
    vehicle.key = certs.new_key()
    assert vehicle.register(token=response.json()["token"])["type"] == "register.accepted"
    vehicle.mtls().close()
    with pytest.raises(ConnectRefused, match="Not authorized"):
        vehicle.mtls(files=old_files)
