"""A private embedded stack for one benchmark (only the components it needs, on free loopback ports, in a temp
dir), and per-component process accounting with psutil: CPU seconds and peak RSS of a component's process tree
(the server's main process and its workers; PostgreSQL's postmaster and its backends)."""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg2

from bench.fleet import free_port
from fleetcore.emqx_api import EmqxApi
from fleetctl.stack import API_KEY_NAME, Ports, Stack, StackConfig


def start_stack(state_dir: Path, components: tuple[str, ...], extra_env: dict[str, str] | None = None) -> Stack:
    ports = Ports(**{name: free_port() for name in Ports.__dataclass_fields__})
    config = StackConfig(state_dir=state_dir, ports=ports, durable=True, components=components,
                         extra_env={"FLEET_LOG_LEVEL": "WARNING"} | (extra_env or {}))
    stack = Stack(config, out=lambda line: None)
    stack.start()
    return stack


def wait_actions_processed(stack: Stack, timeout: float) -> None:
    """Until the broker's rule actions have answered everything they were given (a PUBACK does not wait for them:
    docs/BROKER_STANDIN.md); raises TimeoutError with what is left after ``timeout`` s."""
    api = EmqxApi(stack.url("emqx_api"), API_KEY_NAME, stack.secrets["FLEET_EMQX_API_SECRET"])
    actions = api.rule_action_ids()
    deadline = time.monotonic() + timeout
    while left := api.unanswered(actions):
        if time.monotonic() > deadline:
            raise TimeoutError(f"rule actions still busy after {timeout:.0f} s: {left}")
        time.sleep(0.05)


def wait_telemetry_drained(stack: Stack, timeout: float) -> None:
    """Until the worker has applied everything the broker queued (sql/100_telemetry_queue.sql)."""
    deadline = time.monotonic() + timeout
    with psycopg2.connect(stack.database_url) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT queued FROM ingest.telemetry_queue_summary()")
                left = cur.fetchone()[0]
                if not left:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{left} telemetry messages still queued after {timeout:.0f} s")
                time.sleep(0.02)
    conn.close()


@contextlib.contextmanager
def database_only(durable: bool) -> Iterator[Stack]:
    """The embedded PostgreSQL alone, migrated, in a temporary directory (the SQL benchmarks)."""
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        ports = Ports(**{name: free_port() for name in Ports.__dataclass_fields__})
        os.environ.pop("DATABASE_URL", None)
        stack = Stack(StackConfig(state_dir=Path(tmp), ports=ports, durable=durable, components=()),
                      out=lambda m: None)
        stack.start()
        try:
            yield stack
        finally:
            stack.stop("benchmark finished")


def drain_telemetry(cur, set_size: int = 1000) -> dict[str, int]:
    """What the worker does (api/ingest_queue.py): drain the telemetry queue until it is empty; the sums of
    ``ingest.drain_telemetry()``'s taken / in_sets / one_by_one."""
    total = {"taken": 0, "in_sets": 0, "one_by_one": 0}
    while True:
        cur.execute("SELECT taken, in_sets, one_by_one FROM ingest.drain_telemetry(%s)", (set_size,))
        taken, in_sets, one_by_one = cur.fetchone()
        if not taken:
            return total
        total = {"taken": total["taken"] + taken, "in_sets": total["in_sets"] + in_sets,
                 "one_by_one": total["one_by_one"] + one_by_one}


def backend_pid(conn) -> int:
    """The PostgreSQL backend serving a psycopg2 connection."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def backend_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a PostgreSQL backend has used so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def component_roots(stack: Stack) -> dict[str, int]:
    """PID of each started component's top process, plus PostgreSQL's postmaster when it is embedded."""
    roots = {c.name: c.process.pid for c in stack.started if c.process and c.process.pid}
    postmaster = _postmaster_pid(stack)
    if postmaster:
        roots["postgres"] = postmaster
    return roots


def _postmaster_pid(stack: Stack) -> int | None:
    if stack.postgres is None:
        return None
    pidfile = Path(stack.state_dir) / "pgdata" / "postmaster.pid"
    try:
        return int(pidfile.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process tree so far (children that already exited are not counted)."""
    total = 0.0
    for proc in tree(pid):
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def rss_bytes(pid: int) -> int:
    total = 0
    for proc in tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def pss_bytes(pid: int) -> int:
    """Proportional set size of a process tree: shared pages (PostgreSQL's shared buffers, shared
    libraries) divided among the processes sharing them, so the sum is not inflated."""
    total = 0
    for proc in tree(pid):
        try:
            total += getattr(proc.memory_full_info(), "pss", 0)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class PeakRss(threading.Thread):
    """Samples the summed RSS (and PSS) of each component's process tree every ``interval`` s; keeps the peak."""

    def __init__(self, roots: dict[str, int], interval: float = 0.25) -> None:
        super().__init__(name="bench-peak-rss", daemon=True)
        self.roots, self.interval = roots, interval
        self.peak: dict[str, int] = dict.fromkeys(roots, 0)
        self.peak_pss: dict[str, int] = dict.fromkeys(roots, 0)
        self.processes: dict[str, int] = dict.fromkeys(roots, 0)
        self._halt = threading.Event()

    def sample(self) -> None:
        for name, pid in self.roots.items():
            procs = tree(pid)
            self.processes[name] = max(self.processes[name], len(procs))
            self.peak[name] = max(self.peak[name], rss_bytes(pid))
            self.peak_pss[name] = max(self.peak_pss[name], pss_bytes(pid))

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakRss:
        self.sample()
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.sample()

    def peak_mib(self) -> dict[str, float]:
        return {name: round(value / 2**20, 1) for name, value in self.peak.items()}

    def peak_pss_mib(self) -> dict[str, float]:
        return {name: round(value / 2**20, 1) for name, value in self.peak_pss.items()}
