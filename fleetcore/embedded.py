"""Where the embedded stack is: its ports, and whether one is running from a state directory (``var/``).

``fleetctl run`` (and every ``Stack`` the tests start) holds an exclusive lock on ``<state>/stack.lock`` for as
long as it runs and describes itself in ``<state>/stack.json`` (process id, host, ports, components; no secrets).
A short-lived embedded database that a ``fleetctl db …`` command starts when no stack runs takes the same lock.
So every tool that needs the stack — ``fleetctl`` commands, ``fleet-sim`` — finds it on whatever ports it was
started, and nothing ever starts a second PostgreSQL on a data directory in use: the lock says who has it.

Where a tool looks, first to last: its own options (``--api``, ``--broker``), the running stack of the state
directory, the ``FLEET_PORT_*`` variables ``make run`` reads, the defaults below. The lock is released by the
kernel when its holder dies, even by SIGKILL, so a crashed launcher never leaves a "running" stack behind.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fleetcore import paths

LOCK_FILE = "stack.lock"
STATE_FILE = "stack.json"
HOST = "127.0.0.1"
_ACQUIRE_ATTEMPTS = 10


@dataclass
class Ports:
    """The embedded stack's ports; ``FLEET_PORT_<NAME>`` overrides each (docs/OPERATIONS.md)."""
    mqtt: int = 1883
    mqtt_ws: int = 8083
    mqtt_tls: int = 8883
    mqtt_mtls: int = 8884          # TLS with client certificates (certificate identity)
    emqx_api: int = 18083
    authsvc: int = 8081
    api: int = 8080
    worker: int = 8082             # the worker's /healthz
    postgres: int = 15432

    @classmethod
    def from_env(cls) -> Ports:
        ports = cls()
        for name in ports.__dataclass_fields__:
            raw = os.environ.get(f"FLEET_PORT_{name.upper()}")
            if raw:
                try:
                    setattr(ports, name, int(raw))
                except ValueError:
                    raise ValueError(f"FLEET_PORT_{name.upper()} must be a port number, got {raw!r}") from None
        return ports


class _Urls:
    """The URLs of a stack at ``host`` with ``ports``."""
    host: str
    ports: Ports

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.ports.api}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.host}:{self.ports.mqtt}"


@dataclass(frozen=True)
class RunningStack(_Urls):
    """What ``stack.json`` says about the stack that holds the lock."""
    pid: int
    purpose: str                  # "stack" (fleetctl run, a test stack), "database" (a fleetctl db command),
    #                               "starting" (holds the lock, has not described itself yet)
    host: str = HOST
    ports: Ports = field(default_factory=Ports)
    components: tuple[str, ...] = ()
    ready: bool = False

    def describe(self) -> str:
        if self.purpose == "database":
            return f"a fleetctl command's temporary database (pid {self.pid}, PostgreSQL on port {self.ports.postgres})"
        if self.purpose == "starting":
            return f"a process that is starting the stack (pid {self.pid})"
        return f"the embedded stack (pid {self.pid}, api {self.api_url}, MQTT {self.mqtt_url})"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "components": list(self.components)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunningStack:
        raw = json.loads(text)
        return cls(pid=int(raw["pid"]), purpose=str(raw.get("purpose", "stack")), host=str(raw.get("host", HOST)),
                   ports=Ports(**{k: int(v) for k, v in (raw.get("ports") or {}).items()
                                  if k in Ports.__dataclass_fields__}),
                   components=tuple(raw.get("components") or ()), ready=bool(raw.get("ready")))


class StateDirInUse(RuntimeError):
    """Another process runs the stack (or its database) from this state directory."""

    def __init__(self, state_dir: Path, holder: RunningStack | None) -> None:
        what = holder.describe() if holder else "another process (starting up)"
        super().__init__(f"{state_dir} is in use by {what}")
        self.holder = holder


class StackLock:
    """The exclusive lock of a state directory, held while a stack or its database runs from it."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._fd: int | None = None

    def acquire(self, description: RunningStack) -> None:
        """Take the lock and publish ``description``; StateDirInUse if someone else holds it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        for attempt in range(_ACQUIRE_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == _ACQUIRE_ATTEMPTS - 1:
                    os.close(fd)
                    raise StateDirInUse(self.state_dir, running(self.state_dir)) from None
                time.sleep(0.05)    # perhaps only a reader's brief shared lock (``running``)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.publish(description)

    def publish(self, description: RunningStack) -> None:
        """Rewrite ``stack.json`` (e.g. once every component is ready)."""
        target = self.state_dir / STATE_FILE
        tmp = target.with_suffix(".tmp")
        tmp.write_text(description.to_json(), encoding="utf-8")
        os.replace(tmp, target)

    def release(self) -> None:
        if self._fd is None:
            return
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def running(state_dir: Path | None = None) -> RunningStack | None:
    """The stack (or temporary database) running from ``state_dir`` (default ``var/``), or None."""
    state_dir = Path(state_dir or paths.state_dir())
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass                                   # held: someone runs from here
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None                            # free: whatever stack.json says is stale
    finally:
        os.close(fd)
    try:
        return RunningStack.from_json((state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        pid = _lock_holder_pid(state_dir)
        return RunningStack(pid=pid or 0, purpose="starting")


def _lock_holder_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / LOCK_FILE).read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Addresses(_Urls):
    """Where the embedded stack is (or would be): from the running stack, else ``FLEET_PORT_*``, else defaults."""
    host: str
    ports: Ports
    running: RunningStack | None


def addresses(state_dir: Path | None = None) -> Addresses:
    stack = running(state_dir)
    if stack is not None and stack.purpose == "stack":
        return Addresses(stack.host, stack.ports, stack)
    return Addresses(HOST, Ports.from_env(), None)
