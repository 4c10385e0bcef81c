"""Vehicle keys, CSRs and client-certificate files for the certificate-identity tests (fleetcore/certificates.py).

A vehicle makes its own key and CSR and keeps the key; these helpers do what its firmware would, with the same
``cryptography`` library the backend signs with.
"""
from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def new_key(kind: str = "ec", bits: int = 2048) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    return ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, bits)


def csr_pem(key, *common_names: str) -> str:
    """A CSR signed by ``key`` whose subject has these CNs (normally one: the vehicle id)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names])
    request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM).decode("ascii")


def tampered_csr_pem(key, common_name: str) -> str:
    """A well-formed CSR whose signature does not verify: one byte of the signature flipped."""
    der = bytearray(x509.load_pem_x509_csr(csr_pem(key, common_name).encode()).public_bytes(
        serialization.Encoding.DER))
    der[-5] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode("ascii")


def self_signed_client_cert(ca_dir: Path, key, common_name: str) -> str:
    """A client certificate for ``key`` signed by the CA in ``ca_dir`` (fleet-ca.pem/.key) — bypassing
    registration, as someone holding some CA key would."""
    from fleetcore.certificates import CA_CERT_FILE, CA_KEY_FILE
    ca_cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT_FILE).read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / CA_KEY_FILE).read_bytes(), password=None)
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def write_identity(directory: Path, name: str, key, certificate_pem: str) -> tuple[str, str]:
    """The vehicle's certificate and key as files for paho's ``tls_set(certfile=, keyfile=)``."""
    directory.mkdir(parents=True, exist_ok=True)
    certfile, keyfile = directory / f"{name}.pem", directory / f"{name}.key"
    certfile.write_text(certificate_pem)
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    keyfile.chmod(0o600)
    return str(certfile), str(keyfile)


def der_of(certificate_pem: str) -> bytes:
    return x509.load_pem_x509_certificate(certificate_pem.encode()).public_bytes(serialization.Encoding.DER)
