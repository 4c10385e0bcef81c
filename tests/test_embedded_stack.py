"""The embedded stack as a developer meets it: `fleetctl run` starts, answers health checks, keeps data
across restarts, and never leaves a process behind — not even when the launcher is SIGKILLed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from fleetcore import db, embedded
from fleetctl.stack import Stack, StackConfig
from tests.conftest import free_ports
from tests.support.waiting import wait_until


def test_each_running_service_reports_healthy(stack):
    assert stack.postgres.running()
    for component in stack.started:
        with urllib.request.urlopen(component.health_url, timeout=5) as response:
            assert response.status == 200, component.name


def test_data_survives_a_restart(state_dirs):
    state_dir = state_dirs("restart")
    config = StackConfig(state_dir=state_dir, ports=free_ports(), durable=True)
    first = Stack(config, out=lambda m: None)
    first.start_database()
    conn = db.connect(first.database_url)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO fleets (id, name) VALUES ('survivor', 'Kept across restarts')")
    conn.commit()
    conn.close()
    first.stop()
    assert not first.postgres

    second = Stack(StackConfig(state_dir=state_dir, ports=free_ports(), durable=True), out=lambda m: None)
    second.start_database()
    try:
        conn = db.connect(second.database_url)
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM fleets WHERE id = 'survivor'")
            assert cur.fetchone() == ("Kept across restarts",)
        conn.close()
    finally:
        second.stop()


def _launch(state_dir):
    ports = free_ports()
    env = dict(os.environ, FLEET_STATE_DIR=str(state_dir), PYTHONUNBUFFERED="1",
               **{f"FLEET_PORT_{name.upper()}": str(getattr(ports, name)) for name in ports.__dataclass_fields__})
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "fleetctl", "run"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 90
    for line in proc.stdout:
        lines.append(line)
        if "Press Ctrl-C" in line:      # the summary's last line
            break
        if time.monotonic() > deadline:
            break
    assert any("is up" in line for line in lines), "".join(lines)
    return proc, lines


@pytest.mark.slow
def test_sigkill_of_the_launcher_leaves_no_process_behind(state_dirs):
    state_dir = state_dirs("sigkill")
    proc, _ = _launch(state_dir)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert any("postgres" in " ".join(c.cmdline()) for c in children)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)

    def all_gone():
        return all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)
    wait_until(all_gone, 30, message=lambda: f"processes outlived the launcher: "
                                           f"{[c.pid for c in children if c.is_running()]}")
    assert embedded.running(state_dir) is None, "a dead launcher holds nothing: the next start works"


@pytest.mark.slow
def test_ctrl_c_stops_everything_cleanly_and_says_so(state_dirs):
    state_dir = state_dirs("ctrl-c")
    proc, lines = _launch(state_dir)
    summary = "".join(lines)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert embedded.running(state_dir).pid == proc.pid
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert 'eval "$(.venv/bin/fleetctl env)"' in summary and "npx --yes newman@" in summary, "paste-able next steps"
    assert embedded.running(state_dir) is None and not (state_dir / "stack.json").exists()
    assert proc.returncode == 0, summary + rest
    assert "stopping: received SIGINT" in rest
    assert "all components stopped" in rest
    assert all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)


@pytest.mark.parametrize("component, module", [("api", "api.server"), ("authsvc", "authsvc.server")])
def test_a_second_server_shares_nothing_with_the_stacks_own(stack, tmp_path, component, module):
    """Two stacks on one machine must not touch each other's servers: a server of ours opens no control socket
    and writes nothing to the home directory (gunicorn ≥ 25 did both: stopping one stack deleted the other's
    socket). A second server with the stack's settings starts and stops beside the running one."""
    home = tmp_path / "home"
    home.mkdir()
    port = free_ports().api
    env = {k: v for k, v in stack.component(component).env.items() if k != "XDG_RUNTIME_DIR"}
    env |= {"HOME": str(home), f"{component.upper()}_BIND": f"127.0.0.1:{port}", f"{component.upper()}_WORKERS": "1"}
    second = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=60,
                   message=f"the second {component} did not start")
        processes = [psutil.Process(second.pid), *psutil.Process(second.pid).children(recursive=True)]
        assert [c for p in processes for c in p.net_connections(kind="unix") if c.status == psutil.CONN_LISTEN] == []
    finally:
        second.terminate()
        second.wait(30)
    assert list(home.iterdir()) == []
    assert _answers(f"{stack.url(component)}/healthz")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
