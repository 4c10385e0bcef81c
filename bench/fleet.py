"""Benchmark fixtures: free ports, and registered vehicles with device secrets created straight through the
registry (the same code authsvc runs for an MQTT registration), so a 1,000-vehicle run does not spend its
two minutes enrolling."""
from __future__ import annotations

import uuid

from fleetcore import registry
from fleetcore.db import Database
from fleetctl.ports import free_port  # noqa: F401 - re-exported for benchmarks


def provision_vehicles(database_url: str, device_secret_key: str, prefix: str, count: int,
                       fleet_id: str = "bench") -> list[tuple[str, str]]:
    """Create ``count`` vehicles ``<prefix>0001…`` in ``fleet_id`` and register each; returns (id, secret)."""
    db = Database(database_url, max_connections=2, application_name="bench")
    try:
        with db.transaction() as cur:
            cur.execute("INSERT INTO fleets (id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        (fleet_id, "benchmark fleet"))
            enrollments = registry.create_vehicles_bulk(cur, device_secret_key, fleet_id=fleet_id,
                                                        vehicle_ids=[f"{prefix}{i:04d}" for i in range(1, count + 1)],
                                                        actor_type="system", actor_id="bench")
        credentials = []
        with db.transaction() as cur:
            for enrollment in enrollments:
                outcome = registry.register(cur, device_secret_key, vehicle_id=enrollment.vehicle_id,
                                            enrollment_token=enrollment.token, request_msg_id=uuid.uuid4().hex)
                if not outcome.accepted:
                    raise RuntimeError(f"could not register {enrollment.vehicle_id}: {outcome.reason}")
                credentials.append((enrollment.vehicle_id, outcome.secret))
        return credentials
    finally:
        db.close()
