"""Every tool finds the running stack on whatever ports it was started, and nothing starts a second one.

A second terminal has none of the ``FLEET_PORT_*`` variables ``make run`` was started with: ``fleetctl`` and
``fleet-sim`` read the running stack's ``stack.json`` (fleetcore/embedded.py). The session stack runs on free
ports, never the defaults, so a tool that fell back to a default would fail here.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetcore import embedded
from fleetctl.postgres import EmbeddedPostgres, PostgresError
from fleetctl.stack import Ports, Stack, StackConfig
from simulator import cli as sim_cli
from simulator.arguments import resolve_backend
from tests.conftest import free_ports


def second_terminal(state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh terminal in the project: no stack settings, only where its state is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "EMQX_", "DATABASE_URL", "PG"))}
    return env | {"FLEET_STATE_DIR": str(state_dir)} | extra


def fleetctl(*argv: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetctl", *argv], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_stack_describes_itself_while_it_runs(stack):
    running = embedded.running(stack.state_dir)
    assert running is not None and running.purpose == "stack" and running.ready
    assert running.pid == os.getpid() and running.ports == stack.config.ports
    assert {"postgres", "api", "broker"} <= set(running.components)
    assert "secret" not in (stack.state_dir / embedded.STATE_FILE).read_text().lower()


def test_fleetctl_env_gives_a_second_terminal_the_stack_and_the_password(stack):
    result = fleetctl("env", env=second_terminal(stack.state_dir))
    assert result.returncode == 0, result.stderr
    assert stack.secrets["FLEET_ADMIN_PASSWORD"] not in result.stdout, "the password is read, not printed"
    shell = subprocess.run(["bash", "-c", 'eval "$(cat)"; echo "$API $MQTT_HOST $MQTT_PORT $ADMIN_PW"'],
                           input=result.stdout, capture_output=True, text=True, check=True)
    assert shell.stdout.split() == [f"{stack.url('api')}/api/v1", "127.0.0.1", str(stack.config.ports.mqtt),
                                    stack.secrets["FLEET_ADMIN_PASSWORD"]]


def test_fleetctl_db_commands_use_the_running_stack(stack):
    env = second_terminal(stack.state_dir)
    postmaster = (stack.state_dir / "pgdata" / "postmaster.pid").read_text()
    result = fleetctl("db", "psql", "-tAc", "SELECT current_database() || ' ' || inet_server_port()", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"fleet {stack.config.ports.postgres}"
    for argv in (("db", "status"), ("db", "migrate")):
        result = fleetctl(*argv, env=env)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert (stack.state_dir / "pgdata" / "postmaster.pid").read_text() == postmaster, "the same server throughout"


def test_without_a_stack_psql_and_env_say_so_in_one_line(tmp_path):
    env = second_terminal(tmp_path / "var")
    for argv in (("db", "psql", "-c", "SELECT 1"), ("env",)):
        result = fleetctl(*argv, env=env)
        assert result.returncode == 2
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert len(lines) == 1 and "no embedded stack is running from" in lines[0], lines
    assert not (tmp_path / "var" / "pgdata").exists(), "psql started no server"


def test_a_second_launcher_on_the_same_state_directory_is_refused(stack):
    result = fleetctl("run", env=second_terminal(stack.state_dir, **{
        f"FLEET_PORT_{name.upper()}": str(port) for name, port in vars(free_ports()).items()}))
    assert result.returncode == 1
    assert f"is in use by the embedded stack (pid {os.getpid()}" in result.stdout
    with pytest.raises(embedded.StateDirInUse):
        Stack(StackConfig(state_dir=stack.state_dir, ports=free_ports()), out=lambda m: None).start()
    assert stack.postgres.running() and embedded.running(stack.state_dir).purpose == "stack"


def test_postgres_is_never_started_on_a_data_directory_in_use(stack):
    """Even without the launcher's lock (a server left behind), the data directory's own pid file is respected."""
    other = EmbeddedPostgres(stack.state_dir / "pgdata", free_ports().postgres, "irrelevant")
    assert other.running_pid() == stack.postgres.process.pid
    with pytest.raises(PostgresError, match="is already running on"):
        other.start()
    assert other.process is None


def test_a_db_command_holds_the_lock_while_its_temporary_database_runs(tmp_path):
    state = tmp_path / "var"
    ports = free_ports()
    stack = Stack(StackConfig(state_dir=state, ports=ports, durable=False), out=lambda m: None)
    stack.start_database(migrate=False)
    try:
        holder = embedded.running(state)
        assert holder.purpose == "database" and holder.ports.postgres == ports.postgres
        result = fleetctl("run", env=second_terminal(state))
        assert result.returncode == 1 and "temporary database" in result.stdout, result.stdout
        result = fleetctl("db", "psql", "-tAc", "SELECT 1", env=second_terminal(state))
        assert result.returncode == 0 and result.stdout.strip() == "1", result.stdout + result.stderr
    finally:
        stack.stop()
    assert embedded.running(state) is None and not (state / embedded.STATE_FILE).exists()


def test_fleet_sim_finds_the_stack_else_the_port_variables_else_the_defaults(tmp_path, monkeypatch):
    state = tmp_path / "var"
    monkeypatch.setenv("FLEET_STATE_DIR", str(state))
    for name in Ports.__dataclass_fields__:
        monkeypatch.delenv(f"FLEET_PORT_{name.upper()}", raising=False)

    def resolved(*argv: str) -> tuple[str, str]:
        args = sim_cli.build_parser().parse_args(["run", *argv])
        resolve_backend(args)
        return args.api, args.broker
    assert resolved() == ("http://127.0.0.1:8080", "mqtt://127.0.0.1:1883")
    monkeypatch.setenv("FLEET_PORT_API", "18080")
    monkeypatch.setenv("FLEET_PORT_MQTT", "11883")
    assert resolved() == ("http://127.0.0.1:18080", "mqtt://127.0.0.1:11883")
    lock = embedded.StackLock(state)
    lock.acquire(embedded.RunningStack(pid=os.getpid(), purpose="stack", ports=Ports(api=28080, mqtt=21883),
                                       ready=True))
    try:
        assert resolved() == ("http://127.0.0.1:28080", "mqtt://127.0.0.1:21883"), "the running stack wins"
        assert resolved("--api", "http://h:1", "--broker", "mqtt://h:2") == ("http://h:1", "mqtt://h:2")
    finally:
        lock.release()
    assert resolved() == ("http://127.0.0.1:18080", "mqtt://127.0.0.1:11883"), "a stopped stack is forgotten"
    monkeypatch.setenv("FLEET_PORT_API", "eighty")
    assert sim_cli.main(["run", "--state-dir", str(tmp_path / "sim")]) == 2
