"""Each simulated vehicle's local state file: its identity and device secret (or a pending enrollment token).

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

    @property
    def registered(self) -> bool:
        return bool(self.password)

    def __repr__(self) -> str:  # never print secrets by accident
        return (f"VehicleCredentials(vehicle_id={self.vehicle_id!r}, fleet_id={self.fleet_id!r}, "
                f"registered={self.registered}, has_token={bool(self.enrollment_token)})")


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
        current.enrollment_token = None
        current.registered_at = time.time()
        self.save(current)
        return current

    def forget_secret(self, vehicle_id: str) -> None:
        """The broker no longer accepts the secret (revoked or re-enrolled elsewhere): drop it."""
        current = self.load(vehicle_id)
        if current is not None:
            current.password = None
            self.save(current)
