"""Seeding command for the query benchmarks: ``python -m bench.seed --database-url URL [sizes]``.

Runs bench/seed.sql in one transaction — everything generated in PostgreSQL with generate_series, nothing
hand-written: vehicles with their latest state, missions with six events each, 24 h of 1 Hz telemetry for one
vehicle and sparser telemetry for others — then VACUUM (ANALYZE) of the tables it filled. Defaults are the sizes
the query targets of bench/queries.py are set for: 10,000 vehicles, 100,000 missions (600,000 events) over 100
days, 86,400 history points. Prints what it created and how long it took.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg2

SQL = Path(__file__).with_name("seed.sql")
VACUUMED = ("fleets", "vehicles", "vehicle_state", "missions", "mission_events", "telemetry")


@dataclass
class SeedSizes:
    fleet: str = "seed"
    prefix: str = "seed-"
    vehicles: int = 10_000
    missions: int = 100_000
    days: int = 100
    history_points: int = 86_400
    background_vehicles: int = 50
    background_step_s: int = 10


def seed(database_url: str, sizes: SeedSizes) -> dict:
    """Load the data; returns the sizes, row counts and seconds taken."""
    if sizes.vehicles > 99_999 or sizes.vehicles < 1 + sizes.background_vehicles:
        raise ValueError("vehicles must be between background_vehicles + 1 and 99,999")
    started = time.monotonic()
    conn = psycopg2.connect(database_url, application_name="bench-seed")
    try:
        with conn, conn.cursor() as cur:
            cur.execute(SQL.read_text(), asdict(sizes))
        with conn.cursor() as cur:
            counts = {}
            for table, where in (("vehicles", "fleet_id = %(fleet)s"), ("missions", "fleet_id = %(fleet)s"),
                                 ("mission_events", "mission_id IN (SELECT id FROM missions WHERE fleet_id = "
                                                    "%(fleet)s)"),
                                 ("telemetry", "vehicle_id LIKE %(like)s")):
                cur.execute(f"SELECT count(*) FROM {table} WHERE {where}",  # noqa: S608 - fixed fragments
                            {"fleet": sizes.fleet, "like": sizes.prefix + "%"})
                counts[table] = cur.fetchone()[0]
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            for table in VACUUMED:
                cur.execute(f"VACUUM (ANALYZE) {table}")
    finally:
        conn.close()
    return {"sizes": asdict(sizes), "rows": counts, "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> None:
    defaults = SeedSizes()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                        help="default: $DATABASE_URL (the application role of the stack)")
    for name, value in asdict(defaults).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("give --database-url or set DATABASE_URL")
    sizes = SeedSizes(**{name: getattr(args, name) for name in asdict(defaults)})
    outcome = seed(args.database_url, sizes)
    print(f"seeded in {outcome['seconds']} s: " + ", ".join(f"{k} {v:,}" for k, v in outcome["rows"].items()))


if __name__ == "__main__":
    main()
