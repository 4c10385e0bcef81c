"""Each simulated vehicle's local state file: its identity and device secret (or a pending enrollment token) — or,
with certificate identity, its private key and certificate instead of the secret.

One JSON file per vehicle, ``<state-dir>/<vehicle-id>.json``, mode 0600 in a 0700 directory, written atomically
(temp file + rename) so a crash never leaves half a secret. A real vehicle would keep this in secure storage;
the point is the same: the device secret is shown once at registration and must survive restarts.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fleetcore import topics


@dataclass
class VehicleCredentials:
    vehicle_id: str
    fleet_id: str | None = None
    password: str | None = None            # device secret (role "vehicle"); None until registered
    enrollment_token: str | None = None    # one-time token (role "enrolling"); dropped once registered
    registered_at: float | None = None
    key_pem: str | None = None             # certificate identity: the vehicle's own private key (made once)
    certificate_pem: str | None = None     # … and the certificate the fleet CA signed for it (instead of password)

    @property
    def registered(self) -> bool:
        return bool(self.password or self.certificate_pem)

    def __repr__(self) -> str:  # never print secrets by accident
        return (f"VehicleCredentials(vehicle_id={self.vehicle_id!r}, fleet_id={self.fleet_id!r}, "
                f"registered={self.registered}, has_token={bool(self.enrollment_token)}, "
                f"certificate={bool(self.certificate_pem)})")


class CredentialsStore:
    """Reads and writes the state files of one state directory."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def path(self, vehicle_id: str) -> Path:
        if not topics.is_vehicle_id(vehicle_id):
            raise ValueError(f"not a valid vehicle id: {vehicle_id!r}")
        return self.directory / f"{vehicle_id}.json"

    def load(self, vehicle_id: str) -> VehicleCredentials | None:
        try:
            raw = json.loads(self.path(vehicle_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"unreadable state file {self.path(vehicle_id)}: {exc}") from None
        known = set(VehicleCredentials.__dataclass_fields__)
        return VehicleCredentials(**{k: v for k, v in raw.items() if k in known})

    def save(self, credentials: VehicleCredentials) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.path(credentials.vehicle_id)
        fd, tmp = tempfile.mkstemp(prefix=f".{credentials.vehicle_id}.", dir=self.directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(asdict(credentials), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def store_token(self, vehicle_id: str, fleet_id: str | None, token: str) -> VehicleCredentials:
        """Remember a fresh enrollment token (keeps an existing device secret until registration replaces it)."""
        current = self.load(vehicle_id) or VehicleCredentials(vehicle_id)
        current.fleet_id = fleet_id or current.fleet_id
        current.enrollment_token = token
        self.save(current)
        return current

    def store_secret(self, vehicle_id: str, fleet_id: str | None, password: str) -> VehicleCredentials:
        """Registration succeeded: keep the device secret, forget the used token."""
        current = self.load(vehicle_id) or VehicleCredentials(vehicle_id)
        current.fleet_id = fleet_id or current.fleet_id
        current.password = password
        current.certificate_pem = None          # one identity at a time (the backend withdrew the certificate)
        current.enrollment_token = None
        current.registered_at = time.time()
        self.save(current)
        return current

    def forget_secret(self, vehicle_id: str) -> None:
        """The broker no longer accepts the secret or certificate (revoked or re-enrolled elsewhere): drop it (and
        the key: the next registration sends a CSR for a new one)."""
        current = self.load(vehicle_id)
        if current is not None:
            current.password = current.certificate_pem = current.key_pem = None
            self.save(current)

    def ensure_key(self, vehicle_id: str) -> str:
        """The vehicle's private key for certificate identity, made on first use and kept (a retried registration
        sends the same CSR)."""
        from simulator import certificate
        current = self.load(vehicle_id) or VehicleCredentials(vehicle_id)
        if not current.key_pem:
            current.key_pem = certificate.new_key_pem()
            self.save(current)
        return current.key_pem

    def store_certificate(self, vehicle_id: str, fleet_id: str | None, certificate_pem: str) -> VehicleCredentials:
        """Registration with a CSR succeeded: keep the certificate (the key is already here), no secret, no token."""
        current = self.load(vehicle_id) or VehicleCredentials(vehicle_id)
        current.fleet_id = fleet_id or current.fleet_id
        current.certificate_pem = certificate_pem
        current.password = None
        current.enrollment_token = None
        current.registered_at = time.time()
        self.save(current)
        return current

    def identity_files(self, credentials: VehicleCredentials) -> tuple[str, str]:
        """The certificate and key as files (mode 0600) for paho's ``tls_set(certfile=, keyfile=)``."""
        paths = []
        for suffix, text in (("crt", credentials.certificate_pem), ("key", credentials.key_pem)):
            if not text:
                raise ValueError(f"{credentials.vehicle_id}: no certificate identity stored")
            path = self.directory / f"{credentials.vehicle_id}.{suffix}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(text)
            paths.append(str(path))
        return paths[0], paths[1]
