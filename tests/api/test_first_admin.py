"""The first operator, ``admin``, is made by a command — ``fleetctl create-admin``, run by Compose's migrate job and
by the embedded launcher after migrating — never by the api's app factory. A bad FLEET_ADMIN_PASSWORD stops it
with a clear message and writes nothing."""
from __future__ import annotations

import os
import pty
import subprocess
import sys
import time

import bcrypt
import pytest

from fleetctl.stack import Stack, StackConfig, StackError
from tests.conftest import free_ports
from tests.support.database import rows

GOOD_PASSWORD = "correct horse battery"


def create_admin(db_url: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_ADMIN_PASSWORD")}
    environment.update(DATABASE_URL=db_url, **env)
    return subprocess.run([sys.executable, "-m", "fleetctl", "create-admin"], env=environment, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


def admins(db_url: str) -> list[dict]:
    return rows(db_url, "SELECT username, password_hash FROM users WHERE role = 'admin'")


def test_creates_the_admin_once_with_the_password(db_url):
    done = create_admin(db_url, FLEET_ADMIN_PASSWORD=GOOD_PASSWORD)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "created the operator 'admin'" in done.stdout
    [admin] = admins(db_url)
    assert admin["username"] == "admin"
    assert bcrypt.checkpw(GOOD_PASSWORD.encode(), admin["password_hash"].encode())
    assert rows(db_url, "SELECT action FROM audit_log WHERE target_id = 'admin'") == \
        [{"action": "user.create_initial_admin"}]

    again = create_admin(db_url, FLEET_ADMIN_PASSWORD="another password, later")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "an admin exists already" in again.stdout
    assert admins(db_url) == [admin], "the existing admin's password must not change"
    assert GOOD_PASSWORD not in done.stdout + done.stderr + again.stdout + again.stderr


def test_reads_the_password_from_a_file(db_url, tmp_path):
    secret_file = tmp_path / "admin_password"
    secret_file.write_text(GOOD_PASSWORD + "\n")
    done = create_admin(db_url, FLEET_ADMIN_PASSWORD_FILE=str(secret_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert bcrypt.checkpw(GOOD_PASSWORD.encode(), admins(db_url)[0]["password_hash"].encode())


@pytest.mark.parametrize(("env", "message"), [
    ({"FLEET_ADMIN_PASSWORD": "too-short"}, "FLEET_ADMIN_PASSWORD is not a valid operator password: it must have "
                                            "at least 12 characters"),
    ({"FLEET_ADMIN_PASSWORD": "ü" * 40}, "it must have at most 72 bytes (UTF-8)"),
    ({"FLEET_ADMIN_PASSWORD_FILE": "/nonexistent/admin_password"},
     "cannot read FLEET_ADMIN_PASSWORD_FILE=/nonexistent/admin_password"),
    ({}, "secret FLEET_ADMIN_PASSWORD is required"),
])
def test_a_bad_password_stops_it_with_a_clear_message_and_creates_nothing(db_url, env, message):
    done = create_admin(db_url, **env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stdout
    assert admins(db_url) == []


def test_a_bad_password_is_refused_even_when_an_admin_exists(db_url):
    assert create_admin(db_url, FLEET_ADMIN_PASSWORD=GOOD_PASSWORD).returncode == 0
    done = create_admin(db_url, FLEET_ADMIN_PASSWORD="short")
    assert done.returncode == 2 and "at least 12 characters" in done.stdout


def test_on_a_terminal_it_asks_twice(db_url):
    pid, terminal = pty.fork()
    if pid == 0:  # the child: fleetctl on a terminal, without the variable
        environment = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_ADMIN_PASSWORD")}
        try:  # the child of a pty fork runs fleetctl; it must never return into the test session
            os.execve(sys.executable, [sys.executable, "-m", "fleetctl", "create-admin"],  # noqa: S606
                      environment | {"DATABASE_URL": db_url})
        finally:
            os._exit(127)
    output = b""
    try:
        for prompt in (b"Password of the operator 'admin': ", b"The same again: "):
            output = _read_until(terminal, output, prompt)
            os.write(terminal, GOOD_PASSWORD.encode() + b"\n")
        output = _read_until(terminal, output, b"created the operator 'admin'")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(terminal)
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert GOOD_PASSWORD.encode() not in output, "the password was echoed"
    assert bcrypt.checkpw(GOOD_PASSWORD.encode(), admins(db_url)[0]["password_hash"].encode())


def _read_until(terminal: int, output: bytes, wanted: bytes, timeout: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout
    while wanted not in output:
        assert time.monotonic() < deadline, f"no {wanted!r} in {output!r}"
        output += os.read(terminal, 1024)
    return output


@pytest.mark.slow
def test_the_embedded_launcher_stops_on_a_bad_admin_password(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "secrets.env").write_text("FLEET_ADMIN_PASSWORD=short\n")
    stack = Stack(StackConfig(state_dir=state, ports=free_ports(), durable=False, components=("api",)),
                  out=lambda m: None)
    with pytest.raises(StackError, match="FLEET_ADMIN_PASSWORD is not a valid operator password: it must have at "
                                         "least 12 characters"):
        stack.start()
    assert stack.started == [] and stack.postgres is None, "start-up must stop before any service, cleaned up"
