"""The README's testing guide works as written, in order, on non-default ports (tests/support/readme.py).

Every command of the guide runs in one bash session, as a reader pastes them into a second terminal: the same
shell variables and functions carry from one command to the next, background simulators keep running, and
nothing is given that the guide does not give. The stack is the session's, on free ports (never the defaults), and
the shell gets no ``FLEET_PORT_*``: ``fleetctl`` and ``fleet-sim`` must find it from its state directory, which
is this stack's instead of the project's ``var/`` (``FLEET_STATE_DIR``, and ``var/`` in the commands). Each
command must succeed and show what the guide promises (``# →``); a promise is polled for up to a minute, like a
reader running the command again. The newman line is run by tests/test_postman.py.
"""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from fleetcore import paths
from fleetctl import postman
from fleetctl.stack import Ports
from tests.support import readme
from tests.support.required import require_components

COMMAND_TIMEOUT_S = 120.0       # the longest command is a 15 s simulator run
PROMISE_TIMEOUT_S = 60.0        # "each step shows its result within a minute"
BACKGROUND_TIMEOUT_S = 90.0     # the background simulators stop by themselves (--duration 30 and 20)


class GuideShell:
    """One bash process fed one command at a time; each command's output and exit status come back."""

    def __init__(self, cwd: Path, env: dict[str, str], scratch: Path) -> None:
        self.scratch = scratch
        self.marker = f"__guide_done_{uuid.uuid4().hex}__"
        self.process = subprocess.Popen(["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                        text=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.count = 0

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> tuple[int, str]:
        """Run ``command`` in the session (stdin from /dev/null, as it cannot read the next command)."""
        self.count += 1
        script = self.scratch / f"command-{self.count}.sh"
        script.write_text(command + "\n", encoding="utf-8")
        assert self.process.stdin is not None
        self.process.stdin.write(f". {script} </dev/null\nprintf '\\n{self.marker} %s\\n' $?\n")
        self.process.stdin.flush()
        output: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"still running after {timeout:.0f} s:\n{command}\n{''.join(output)}") from None
            if line is None:
                raise AssertionError(f"the shell exited during:\n{command}\n{''.join(output)}")
            if line.startswith(self.marker):
                return int(line.split()[1]), "".join(output).rstrip("\n")
            output.append(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def guide_shell(stack, tmp_path):
    require_components(stack, "api", "broker", "worker")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("FLEET_", "EMQX_", "DATABASE_URL", "PG"))}
    env["FLEET_STATE_DIR"] = str(stack.state_dir)
    shell = GuideShell(paths.PROJECT_ROOT, env, tmp_path)
    yield shell
    shell.close()


def test_the_guide_runs_on_a_stack_with_other_ports(stack):
    """Item one of the guide's contract: nothing in it may depend on the default ports."""
    defaults = Ports()
    clashes = [name for name in Ports.__dataclass_fields__
               if getattr(stack.config.ports, name) == getattr(defaults, name)]
    assert clashes == [], "the test stack must not use the default ports"
    text = readme.guide_text()
    for port in {defaults.api, defaults.mqtt, defaults.postgres, defaults.emqx_api}:
        assert f":{port}" not in "\n".join(c.text for c in readme.guide_commands()), f"a command names port {port}"
    assert text.count("```sh") >= 6


def replacements(stack) -> dict[str, str]:
    """The guide's paths for this stack: its state directory for ``var/``, the venv running the tests."""
    return {"var/": f"{stack.state_dir}/", ".venv/bin/": f"{Path(sys.executable).parent}/"}


def test_every_command_of_the_guide_works_as_written(stack, guide_shell):
    commands = readme.guide_commands()
    newman = [c for c in commands if c.text.startswith("npx ")]
    assert [c.text for c in newman] == [postman.newman_command("var/postman.environment.json")], \
        "the guide's newman command is the one tests/test_postman.py runs"
    ran = []
    for command in commands:
        if command in newman:
            continue
        text = readme.substitute(command.text, replacements(stack))
        started = time.monotonic()
        status, output = guide_shell.run(text)
        deadline = time.monotonic() + PROMISE_TIMEOUT_S
        while command.expect and not (status == 0 and all(promise in output for promise in command.expect)):
            if time.monotonic() >= deadline:
                break
            time.sleep(1.0)
            status, output = guide_shell.run(text)
        missing = [promise for promise in command.expect if promise not in output]
        assert status == 0 and not missing, (
            f"{command}\nexit status {status}; promised but not shown: {missing}\n--- output ---\n{output}")
        ran.append(command)
        print(f"{time.monotonic() - started:5.1f} s  {command.text.splitlines()[0][:100]}")  # shown with -rP
    # The background simulators end by themselves (their --duration), each cleanly.
    status, output = guide_shell.run("wait", timeout=BACKGROUND_TIMEOUT_S)
    assert status == 0, output
    for log in ("courier.log", "picky.log"):
        text = (stack.state_dir / log).read_text(encoding="utf-8")
        assert "stopped cleanly" in text, f"{log}:\n{text[-3000:]}"
    assert len(ran) == len(commands) - len(newman)


def test_a_failed_login_in_the_guide_says_why(stack, guide_shell):
    setup = [c for c in readme.guide_commands() if c.section == "Testing guide"]
    env_line, tokens_function, login = setup[:3]
    for command in (env_line, tokens_function):
        assert guide_shell.run(readme.substitute(command.text, replacements(stack)))[0] == 0
    status, output = guide_shell.run("ADMIN_PW=wrong-password\n" + login.text)
    assert status != 0
    assert output.strip() == "no token: invalid username or password"
    assert guide_shell.run('test -z "$TOKEN"')[0] == 0, "no stale token is left behind"
