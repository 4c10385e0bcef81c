"""``fleetctl enroll-bulk``: create many vehicles with enrollment tokens at once, written to a CSV.

For load tests and the simulator: ``fleetctl enroll-bulk --fleet demo --count 1000 --out vehicles.csv`` creates
``demo-0001`` … ``demo-1000`` (``pending``) directly in the database, through the same registry code as the api,
all or nothing. The CSV (mode 0600: it holds one-time credentials) has the header
``vehicle_id,fleet_id,enrollment_token,expires_at``. A vehicle registers with its token as the MQTT password,
username = its vehicle id and client id = ``_enroll-{vehicle_id}`` (``fleetcore.topics.enrollment_client_id``):
never its own client id, whose persistent session a token must not open (docs/PROTOCOL.md, Registration).
"""
from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from fleetcore import registry, topics
from fleetcore.db import Database

CSV_HEADER = ("vehicle_id", "fleet_id", "enrollment_token", "expires_at")


def vehicle_ids(prefix: str, count: int, start: int = 1) -> list[str]:
    if not 1 <= count <= 100_000 or start < 0:
        raise ValueError("--count must be 1–100000 and --start not negative")
    width = max(4, len(str(start + count - 1)))
    ids = [f"{prefix}{n:0{width}d}" for n in range(start, start + count)]
    bad = [vid for vid in ids if not topics.is_vehicle_id(vid)]
    if bad:
        raise ValueError(f"not valid vehicle ids (prefix {prefix!r}): {bad[0]}")
    return ids


def enroll_bulk(database_url: str, key: str, *, fleet_id: str, count: int, prefix: str | None = None,
                start: int = 1, token_ttl_s: int = registry.DEFAULT_TOKEN_TTL_S, create_fleet: bool = False,
                actor: str = "fleetctl") -> list[registry.Enrollment]:
    """Create ``count`` vehicles of one fleet, each with a fresh token, in one transaction."""
    ids = vehicle_ids(f"{fleet_id}-" if prefix is None else prefix, count, start)
    database = Database(database_url, max_connections=1, application_name="fleetctl-enroll")
    try:
        with database.transaction() as cur:
            if create_fleet:
                cur.execute("INSERT INTO fleets (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING",
                            (fleet_id, fleet_id))
            enrollments = registry.create_vehicles_bulk(cur, key, fleet_id=fleet_id, vehicle_ids=ids,
                                                        actor_type="operator", actor_id=actor,
                                                        token_ttl_s=token_ttl_s)
            cur.execute("INSERT INTO audit_log (actor_type, actor_id, action, target_type, target_id, detail) "
                        "VALUES ('operator', %s, 'vehicle.enroll_bulk', 'fleet', %s, %s)",
                        (actor, fleet_id, {"count": count, "first": ids[0], "last": ids[-1]}))
        return enrollments
    finally:
        database.close()


def csv_text(enrollments: Iterable[registry.Enrollment]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for e in enrollments:
        writer.writerow((e.vehicle_id, e.fleet_id, e.token, e.expires_at.isoformat()))
    return out.getvalue()


def write_csv(enrollments: list[registry.Enrollment], out: str) -> None:
    """Write the CSV to ``out`` (mode 0600), or to standard output for ``-``."""
    text = csv_text(enrollments)
    if out == "-":
        sys.stdout.write(text)
        return
    path = Path(out)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
