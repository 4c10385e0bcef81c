"""Two simulators never drive the same vehicle by accident: a run claims its vehicle ids (simulator/claims.py)."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from simulator import cli
from simulator.claims import RunClaims, VehiclesInUse

HOLDER = """
import sys
from simulator.claims import RunClaims
claims = RunClaims(sys.argv[1])
claims.claim(sys.argv[2:])
print("claimed", flush=True)
sys.stdin.readline()
claims.release()
"""


@pytest.fixture
def other_run(tmp_path):
    """Another fleet-sim process that drives some vehicles of the same state directory."""
    processes = []

    def start(*vehicle_ids: str) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), *vehicle_ids],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "claimed"
        processes.append(process)
        return process
    yield start
    for process in processes:
        process.kill()
        process.wait(10)


def test_vehicles_another_run_drives_are_refused(tmp_path, other_run):
    holder = other_run("sim-0001", "sim-0002")
    claims = RunClaims(tmp_path)
    with pytest.raises(VehiclesInUse) as refused:
        claims.claim(["sim-0002", "sim-0003"])
    assert refused.value.holders == {"sim-0002": holder.pid}
    assert str(refused.value) == f"sim-0002 is already run by another fleet-sim (pid {holder.pid})"
    claims.claim(["sim-0003", "sim-0004"])      # other vehicles: fine
    claims.release()


def test_a_run_that_ended_or_died_holds_nothing(tmp_path, other_run):
    ended = other_run("sim-0001")
    ended.stdin.write("\n")
    ended.stdin.flush()
    ended.wait(10)
    killed = other_run("sim-0002")
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    claims = RunClaims(tmp_path)
    claims.claim(["sim-0001", "sim-0002"])
    assert sorted(p.name for p in (tmp_path / "runs").glob("*.ids")) == [claims.path.name]
    claims.release()
    assert not claims.path.exists()


def test_takeover_claims_anyway(tmp_path, other_run):
    other_run("sim-0001")
    claims = RunClaims(tmp_path)
    claims.claim(["sim-0001"], force=True)
    claims.release()


def test_the_command_line_explains_the_collision(tmp_path, other_run, capsys):
    holder = other_run("sim-0001")
    code = cli.main(["run", "--vehicles", "1", "--state-dir", str(tmp_path), "--plain",
                     "--api", "http://127.0.0.1:9", "--broker", "mqtt://127.0.0.1:9"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"fleet-sim: sim-0001 is already run by another fleet-sim (pid {holder.pid}): choose other vehicles with "
        f"--fleet or --prefix, stop that simulator, or pass --takeover")
