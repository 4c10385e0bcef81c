"""``fleetctl enroll-bulk``: vehicles with tokens in one go, written to a CSV that the simulator reads."""
from __future__ import annotations

import csv
import os
import stat

from fleetctl import cli
from tests.api.conftest import unique


def run(monkeypatch, stack, *args: str) -> int:
    monkeypatch.setenv("DATABASE_URL", stack.database_url)
    monkeypatch.setenv("FLEET_DEVICE_SECRET_KEY", stack.secrets["FLEET_DEVICE_SECRET_KEY"])
    return cli.main(["enroll-bulk", *args])


def test_enroll_bulk_writes_working_tokens(monkeypatch, stack, broker, fleet_id, tmp_path, stack_db):
    out = tmp_path / "vehicles.csv"
    assert run(monkeypatch, stack, "--fleet", fleet_id, "--count", "250", "--out", str(out)) == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["vehicle_id", "fleet_id", "enrollment_token", "expires_at"]
    assert len(rows) == 250 and rows[0]["vehicle_id"] == f"{fleet_id}-0001" and rows[-1]["vehicle_id"] == \
        f"{fleet_id}-0250"
    assert len({r["enrollment_token"] for r in rows}) == 250
    for row in (rows[0], rows[123], rows[-1]):
        answer = broker.authn_enrolling(row["vehicle_id"], row["enrollment_token"])
        assert answer["client_attrs"] == {"role": "enrolling", "fleet": fleet_id}
    with stack_db.transaction() as cur:
        cur.execute("SELECT count(*) AS n FROM vehicles WHERE fleet_id = %s AND status = 'pending'", (fleet_id,))
        assert cur.fetchone()["n"] == 250
        cur.execute("SELECT detail FROM audit_log WHERE action = 'vehicle.enroll_bulk' AND target_id = %s",
                    (fleet_id,))
        assert cur.fetchone()["detail"]["count"] == 250


def test_enroll_bulk_is_all_or_nothing(monkeypatch, stack, fleet_id, tmp_path, stack_db):
    assert run(monkeypatch, stack, "--fleet", fleet_id, "--count", "3", "--prefix", "bulk-a", "--out",
               str(tmp_path / "a.csv")) == 0
    # overlaps bulk-a0003: nothing of the second batch may be created
    assert run(monkeypatch, stack, "--fleet", fleet_id, "--count", "5", "--prefix", "bulk-a", "--start", "3",
               "--out", str(tmp_path / "b.csv")) == 1
    assert not (tmp_path / "b.csv").exists()
    with stack_db.transaction() as cur:
        cur.execute("SELECT count(*) AS n FROM vehicles WHERE fleet_id = %s", (fleet_id,))
        assert cur.fetchone()["n"] == 3


def test_enroll_bulk_errors(monkeypatch, stack, tmp_path, stack_db):
    missing = unique("nofleet")
    assert run(monkeypatch, stack, "--fleet", missing, "--count", "2", "--out", str(tmp_path / "x.csv")) == 1
    assert run(monkeypatch, stack, "--fleet", missing, "--count", "2", "--create-fleet", "--out",
               str(tmp_path / "x.csv")) == 0
    assert run(monkeypatch, stack, "--fleet", missing, "--count", "0", "--out", str(tmp_path / "y.csv")) == 1
    assert run(monkeypatch, stack, "--fleet", missing, "--count", "1", "--prefix", "bad/", "--out",
               str(tmp_path / "y.csv")) == 1
