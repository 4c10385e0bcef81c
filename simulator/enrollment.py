"""Where a simulated vehicle's one-time enrollment token comes from.

* a CSV written by ``fleetctl enroll-bulk`` (header ``vehicle_id,fleet_id,enrollment_token,expires_at``), or
* the api, as an operator: ``POST /api/v1/vehicles`` creates the vehicle and returns a token; for a vehicle that
  already exists, ``POST /api/v1/vehicles/{id}/enrollment`` issues a fresh one.

Tokens go into each vehicle's state file (``simulator.credentials_store``); vehicles that already hold a device
secret are left alone. A vehicle uses its token on its enrollment client id ``_enroll-{vid}``, never on its own
(``simulator.vehicle``, docs/PROTOCOL.md Registration).
"""
from __future__ import annotations

import csv
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fleetcore import topics
from fleetcore.logs import log_event
from simulator.api_client import ApiError, OperatorApi, VehicleRevoked
from simulator.credentials_store import CredentialsStore

log = logging.getLogger("simulator.enrollment")
CSV_HEADER = ("vehicle_id", "fleet_id", "enrollment_token", "expires_at")


@dataclass(frozen=True)
class EnrollmentRow:
    vehicle_id: str
    fleet_id: str
    token: str
    expires_at: str


def read_enrollment_csv(path: Path | str) -> list[EnrollmentRow]:
    """The rows of a bulk-enrollment CSV; raises ValueError naming the line for anything malformed."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not set(CSV_HEADER) <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected the header {','.join(CSV_HEADER)}, got {reader.fieldnames}")
        rows = []
        for line, record in enumerate(reader, start=2):
            vehicle_id = (record["vehicle_id"] or "").strip()
            token = (record["enrollment_token"] or "").strip()
            if not topics.is_vehicle_id(vehicle_id) or not token:
                raise ValueError(f"{path}, line {line}: needs a valid vehicle_id and an enrollment_token")
            rows.append(EnrollmentRow(vehicle_id, (record["fleet_id"] or "").strip(), token,
                                      (record["expires_at"] or "").strip()))
    return rows


def load_csv_tokens(store: CredentialsStore, rows: list[EnrollmentRow]) -> int:
    """Store the CSV's tokens for vehicles without a device secret; returns how many were stored."""
    stored = 0
    for row in rows:
        current = store.load(row.vehicle_id)
        if current is not None and current.registered:
            continue
        store.store_token(row.vehicle_id, row.fleet_id, row.token)
        stored += 1
    return stored


class ApiEnroller:
    """Creates vehicles (or new enrollment tokens) through the operator api."""

    def __init__(self, api: OperatorApi, fleet_id: str, model: str = "fleet-sim") -> None:
        self.api = api
        self.fleet_id = fleet_id
        self.model = model

    def ensure_fleet(self) -> None:
        try:
            self.api.get(f"/api/v1/fleets/{self.fleet_id}")
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.api.post("/api/v1/fleets", {"id": self.fleet_id, "name": f"Simulated fleet {self.fleet_id}"})
            log_event(log, "fleet.created", fleet=self.fleet_id)

    def new_token(self, vehicle_id: str) -> str:
        """Create the vehicle with a token, or (it exists) issue it a fresh token. Never re-admits a vehicle an
        operator revoked: that raises VehicleRevoked with the api's explanation (who revoked it, why)."""
        try:
            answer = self.api.post("/api/v1/vehicles", {"id": vehicle_id, "fleet_id": self.fleet_id,
                                                        "name": f"simulated {vehicle_id}", "model": self.model},
                                   expect=(201,))
            return answer["enrollment"]["token"]
        except ApiError as exc:
            if exc.status != 409:
                raise
        try:
            return self.api.post(f"/api/v1/vehicles/{vehicle_id}/enrollment", expect=(200, 201))["token"]
        except ApiError as exc:
            if exc.code == "vehicle_revoked":
                raise VehicleRevoked(str(exc.detail)) from None
            raise

    def prepare(self, store: CredentialsStore, vehicle_ids: list[str], parallel: int = 8) -> int:
        """Get tokens for every vehicle that has neither a device secret nor a token; returns how many."""
        def needs_token(vehicle_id: str) -> bool:
            current = store.load(vehicle_id)
            return current is None or (not current.registered and not current.enrollment_token)

        todo = [v for v in vehicle_ids if needs_token(v)]

        def enroll(vehicle_id: str) -> None:
            store.store_token(vehicle_id, self.fleet_id, self.new_token(vehicle_id))

        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            list(pool.map(enroll, todo))
        if todo:
            log_event(log, "enrollment.tokens_issued", fleet=self.fleet_id, count=len(todo))
        return len(todo)
