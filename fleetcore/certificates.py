"""The fleet CA: vehicles' certificate signing requests (CSRs) checked and signed, with the ``cryptography`` library.

Certificate identity is the alternative to a device secret (docs/PROTOCOL.md → Certificate identity): a vehicle
that registers with an enrollment token may send a CSR, in the style of AWS IoT fleet provisioning by claim, and
gets back a client certificate signed by the fleet CA. With it, it connects to the broker's mTLS listener, where
the broker verifies the chain (``verify_peer``, ``fail_if_no_peer_cert``) and authsvc admits the certificate's CN
as the vehicle id (authsvc/authn.py, fleetcore/registry.py ``verify_certificate``).

What is checked here, before anything is signed (``parse_csr``): the text is one PEM CSR of sane size, its
self-signature verifies (the requester holds the private key), its key is RSA ≥ 2048 bits, EC on P-256/P-384/P-521
or Ed25519, and its subject is exactly one CN equal to the vehicle id. The issued certificate carries only what the
CA decides (``FleetCA.issue``): subject CN = the vehicle id, a random serial, the configured validity, and the
extensions of a TLS client certificate — nothing the CSR asks for beyond its public key.

The CA key is read from a file (mode 0600) by authsvc only; ``create_ca`` makes a CA for the embedded stack and for
``fleetctl fleet-ca`` (production keeps the key where only authsvc reads it). Nothing here logs key material.
"""
from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MAX_CSR_CHARS = 16 * 1024            # a 4096-bit RSA CSR is under 2 KB of PEM
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 8192
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
CLOCK_SKEW = datetime.timedelta(minutes=5)  # not_before lies this far back: a vehicle's clock may be behind
CA_CERT_FILE, CA_KEY_FILE = "fleet-ca.pem", "fleet-ca.key"
CA_VALIDITY = datetime.timedelta(days=3650)


class InvalidCsr(ValueError):
    """The CSR cannot be signed; ``message`` says why (sent to the vehicle in ``register.rejected``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CertificateAuthorityError(RuntimeError):
    """The fleet CA's files cannot be used (missing, unreadable, not a CA certificate and its key)."""


@dataclass(frozen=True)
class IssuedCertificate:
    pem: str
    serial_hex: str                  # lower-case hex, no leading zeros
    fingerprint: bytes               # SHA-256 of the DER encoding: what authn compares
    not_before: datetime.datetime
    not_after: datetime.datetime


def fingerprint(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()


def _common_names(name: x509.Name) -> list[str]:
    return [str(attr.value) for attr in name.get_attributes_for_oid(NameOID.COMMON_NAME)]


def parse_csr(pem: object, vehicle_id: str) -> x509.CertificateSigningRequest:
    """The CSR in ``pem`` if the fleet CA may sign it for ``vehicle_id``; InvalidCsr saying why not."""
    if not isinstance(pem, str) or not pem.strip() or len(pem) > MAX_CSR_CHARS or "\x00" in pem:
        raise InvalidCsr(f"data.csr must be a PEM certificate signing request of at most {MAX_CSR_CHARS} characters")
    try:
        csr = x509.load_pem_x509_csr(pem.encode("utf-8"))
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidCsr("data.csr is not a PEM certificate signing request (-----BEGIN CERTIFICATE REQUEST-----)") \
            from None
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidCsr("the CSR's public key cannot be read") from None
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise InvalidCsr(f"an RSA key must have {MIN_RSA_BITS}–{MAX_RSA_BITS} bits, this one has {key.key_size}")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _CURVES):
            raise InvalidCsr(f"an EC key must be on P-256, P-384 or P-521, not {key.curve.name}")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise InvalidCsr("the key must be RSA (≥ 2048 bits), EC (P-256, P-384, P-521) or Ed25519")
    # After the key type: is_signature_valid raises for key types it cannot check.
    if not csr.is_signature_valid:
        raise InvalidCsr("the CSR's signature does not verify: it must be signed with the key it carries")
    names = _common_names(csr.subject)
    if names != [vehicle_id]:
        shown = names[0][:80] if len(names) == 1 else f"{len(names)} common names"
        raise InvalidCsr(f"the CSR's subject must have exactly one CN, the vehicle id {vehicle_id!r}; got {shown!r}")
    return csr


class FleetCA:
    """The fleet CA's certificate and key: signs vehicles' CSRs."""

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
        self.certificate = certificate
        self.key = key
        self.chain_pem = [certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")]

    @classmethod
    def load(cls, cert_file: str | Path, key_file: str | Path) -> FleetCA:
        try:
            certificate = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
            key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # the message names the files and the error class only, never their content
            raise CertificateAuthorityError(f"cannot load the fleet CA from {cert_file} and {key_file}: "
                                            f"{type(exc).__name__}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CertificateAuthorityError(f"{key_file}: the fleet CA key must be EC or RSA")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CertificateAuthorityError(f"{cert_file} is not a CA certificate (basicConstraints CA:TRUE)")
        if key.public_key().public_numbers() != certificate.public_key().public_numbers():  # type: ignore[union-attr]
            raise CertificateAuthorityError(f"{key_file} is not the key of {cert_file}")
        return cls(certificate, key)

    def issue(self, csr: x509.CertificateSigningRequest, vehicle_id: str, validity: datetime.timedelta,
              now: datetime.datetime | None = None) -> IssuedCertificate:
        """A TLS client certificate for ``vehicle_id`` with the CSR's public key (checked by ``parse_csr``)."""
        now = now or datetime.datetime.now(datetime.UTC)
        not_before, not_after = now - CLOCK_SKEW, now + validity
        # never beyond the CA's own validity: a chain with an outliving leaf fails verification at that point anyway
        not_after = min(not_after, self.certificate.not_valid_after_utc)
        public_key = csr.public_key()
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, vehicle_id)]))
                   .issuer_name(self.certificate.subject)
                   .public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before)
                   .not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                                                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                                crl_sign=False, encipher_only=False, decipher_only=False),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False))
        certificate = builder.sign(self.key, hashes.SHA256())
        der = certificate.public_bytes(serialization.Encoding.DER)
        return IssuedCertificate(pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                                 serial_hex=format(certificate.serial_number, "x"), fingerprint=fingerprint(der),
                                 not_before=certificate.not_valid_before_utc,
                                 not_after=certificate.not_valid_after_utc)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def create_ca(directory: Path, common_name: str = "Fleet vehicle CA") -> bool:
    """A new fleet CA in ``directory`` (``fleet-ca.pem``, and ``fleet-ca.key`` with mode 0600), unless one is there.
    True when it was created. EC P-256: small certificates and fast handshakes on the vehicles."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if cert_path.exists() and key_path.exists():
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fleet backend"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + CA_VALIDITY)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                key_cert_sign=True, crl_sign=True, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    for stale in (cert_path, key_path):      # half a CA (one file lost) is replaced whole
        stale.unlink(missing_ok=True)
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    cert_path.chmod(0o644)
    return True
