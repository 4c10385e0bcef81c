"""What a running simulation shows: a live ``rich`` table on a terminal, or one structured log line every few
seconds (``--plain``, CI, pipes). Both read ``Fleet.snapshot()`` and compute rates between two snapshots."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fleetcore.logs import log_event
from simulator.fleet import Snapshot

log = logging.getLogger("simulator")

STATE_ORDER = ("online", "http", "connecting", "registering", "waiting", "new", "failed", "stopped")
MISSION_ORDER = ("accepted", "completed", "failed", "rejected", "cancelled")


def rate(now: Snapshot, before: Snapshot | None) -> float:
    if before is None or now.at <= before.at:
        return 0.0
    return (now.messages_out - before.messages_out) / (now.at - before.at)


def render(now: Snapshot, before: Snapshot | None, title: str) -> Group:
    """The live view: connections, throughput, missions, and everything that went wrong."""
    vehicles = Table(title=title, show_header=True, header_style="bold", expand=False)
    for state in STATE_ORDER:
        vehicles.add_column(state)
    vehicles.add_row(*(str(now.states.get(state, 0)) for state in STATE_ORDER))

    traffic = Table(show_header=True, header_style="bold")
    for name in ("msg/s out", "telemetry", "status", "mission", "batches", "buffered", "commands in"):
        traffic.add_column(name, justify="right")
    traffic.add_row(f"{rate(now, before):.0f}", str(now.sent.get("telemetry", 0)), str(now.sent.get("status", 0)),
                    str(now.sent.get("mission", 0)), str(now.sent.get("batch", 0)), str(now.buffered),
                    str(now.commands))

    missions = Table(show_header=True, header_style="bold")
    missions.add_column("missions active", justify="right")
    for name in MISSION_ORDER:
        missions.add_column(name, justify="right")
    missions.add_row(str(now.active_missions), *(str(now.missions.get(name, 0)) for name in MISSION_ORDER))

    problems = Table(show_header=True, header_style="bold red")
    for name in ("refused", "reg rej", "sub denied", "drops", "pub err", "bad cmd", "loop err", "buf lost"):
        problems.add_column(name, justify="right")
    problems.add_row(str(now.refused), str(now.register_rejected), str(now.subscribe_denied), str(now.disconnects),
                     str(now.publish_errors), str(now.bad_commands), str(now.loop_errors), str(now.buffer_dropped))
    parts: list = [vehicles, traffic, missions, problems]
    if now.faults:
        parts.append(Text("faults injected: " + ", ".join(f"{k}={v}" for k, v in sorted(now.faults.items())),
                          style="yellow"))
    for reason, count in sorted(now.failures.items()):
        parts.append(Text(f"failed ({count}): {reason}", style="red"))
    parts.append(Text("Ctrl-C stops cleanly (OFFLINE, then disconnect)", style="dim"))
    return Group(*parts)


class _AboveLive(logging.Handler):
    """Prints log lines through the live display's console, which draws them above the table and redraws the
    table once. Written straight to stderr, a line lands inside the table and the next refresh repeats its
    header below it."""

    def __init__(self, live: Live, formatter: logging.Formatter | None) -> None:
        super().__init__()
        self.live = live
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.live.console.print(Text(self.format(record)), soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never break the display
            self.handleError(record)


@contextmanager
def logs_above(live: Live) -> Iterator[None]:
    """While the live display runs, log lines go through it (``_AboveLive``); afterwards to stderr again."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [_AboveLive(live, saved[0].formatter if saved else None)]
    try:
        yield
    finally:
        root.handlers[:] = saved


def log_snapshot(now: Snapshot, before: Snapshot | None) -> None:
    """The plain-log equivalent of ``render``: one event line."""
    log_event(log, "simulator.progress", vehicles=now.vehicles, states=now.states,
              msg_per_s=round(rate(now, before), 1), sent=now.sent, buffered=now.buffered, commands=now.commands,
              missions=now.missions, active_missions=now.active_missions, refused=now.refused,
              register_rejected=now.register_rejected, subscribe_denied=now.subscribe_denied,
              disconnects=now.disconnects, http_fallbacks=now.fallbacks,
              errors=now.publish_errors + now.bad_commands + now.loop_errors, faults=now.faults,
              failures=now.failures)
