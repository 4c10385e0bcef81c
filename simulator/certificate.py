"""A simulated vehicle's own key and CSR for certificate identity (docs/PROTOCOL.md, Certificate identity).

The vehicle makes an EC P-256 key once, keeps it in its state file (``simulator.credentials_store``) and sends a
CSR with ``CN = <vehicle id>`` in its registration request; the backend answers with a certificate instead of a
device secret, and the vehicle connects to the mTLS listener with it and no password.
"""
from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def new_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def csr_pem(key_pem: str, vehicle_id: str) -> str:
    key = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the vehicle's key must be an EC key")
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, vehicle_id)]))
               .sign(key, hashes.SHA256()))
    return request.public_bytes(serialization.Encoding.PEM).decode("ascii")
