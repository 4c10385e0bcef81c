"""Child processes that never outlive the launcher.

Every child is started with ``PR_SET_PDEATHSIG`` (Linux): when the launcher dies for any reason, even
SIGKILL, the kernel sends the child its stop signal, so no orphan PostgreSQL or service is left behind.
The child's output is pumped line by line to a sink (console with a component prefix, a log file, or both).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent_pid: int, sig: int) -> Callable[[], None]:
    def setup() -> None:  # runs in the child between fork and exec, after the user switch
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, int(sig))
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os.kill(os.getpid(), int(sig))
    return setup


class OutputPump(threading.Thread):
    """Copies a child's output to a log file and to a line callback; keeps the last lines for error messages."""

    def __init__(self, name: str, stream: IO[bytes], log_path: Path | None,
                 on_line: Callable[[str, str], None] | None) -> None:
        super().__init__(name=f"pump-{name}", daemon=True)
        self.component = name
        self.stream = stream
        self.log_path = log_path
        self.on_line = on_line
        self.tail: deque[str] = deque(maxlen=40)

    def run(self) -> None:
        log = open(self.log_path, "ab", buffering=0) if self.log_path else None  # noqa: SIM115
        try:
            for raw in iter(self.stream.readline, b""):
                if log:
                    log.write(raw)
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.tail.append(line)
                if self.on_line:
                    self.on_line(self.component, line)
        finally:
            if log:
                log.close()


class ChildProcess:
    """One supervised child: started, pumped, asked to stop, killed if it will not."""

    def __init__(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, user: tuple[int, int] | None = None,
                 stop_signal: int = signal.SIGTERM, log_path: Path | None = None,
                 on_line: Callable[[str, str], None] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.user = user
        self.stop_signal = stop_signal
        self.log_path = log_path
        self.on_line = on_line
        self.popen: subprocess.Popen[bytes] | None = None
        self.pump: OutputPump | None = None
        self.stopping = False

    def start(self) -> None:
        """Start the child. Call from a thread that lives as long as the child (the parent-death signal
        is tied to the creating thread)."""
        kwargs: dict = {}
        if self.user is not None:
            kwargs.update(user=self.user[0], group=self.user[1], extra_groups=[])
        self.popen = subprocess.Popen(  # argv is built by this package, never from user input
            self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid(), self.stop_signal), **kwargs)
        self.pump = OutputPump(self.name, self.popen.stdout, self.log_path, self.on_line)
        self.pump.start()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def poll(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def last_lines(self, n: int = 15) -> str:
        if not self.pump:
            return ""
        lines = list(self.pump.tail)[-n:]
        return "\n".join(lines)

    def stop(self, timeout: float = 15.0) -> int | None:
        """Ask the child to stop with its stop signal; SIGKILL it if it does not within ``timeout``."""
        if self.popen is None:
            return None
        self.stopping = True
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(self.stop_signal)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
            except ProcessLookupError:
                pass
        if self.pump:
            self.pump.join(timeout=2)
        return self.popen.returncode
