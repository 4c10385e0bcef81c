"""What a running simulation shows: a live ``rich`` table on a terminal, or one structured log line every few
seconds (``--plain``, CI, pipes). Both read ``Fleet.snapshot()`` and compute rates between two snapshots."""
from __future__ import annotations

import logging

from rich.console import Group
from rich.table import Table
from rich.text import Text

from fleetcore.logs import log_event
from simulator.fleet import Snapshot

log = logging.getLogger("simulator")

STATE_ORDER = ("online", "connecting", "registering", "waiting", "new", "failed", "stopped")
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


def log_snapshot(now: Snapshot, before: Snapshot | None) -> None:
    """The plain-log equivalent of ``render``: one event line."""
    log_event(log, "simulator.progress", vehicles=now.vehicles, states=now.states,
              msg_per_s=round(rate(now, before), 1), sent=now.sent, buffered=now.buffered, commands=now.commands,
              missions=now.missions, active_missions=now.active_missions, refused=now.refused,
              register_rejected=now.register_rejected, subscribe_denied=now.subscribe_denied,
              disconnects=now.disconnects,
              errors=now.publish_errors + now.bad_commands + now.loop_errors, faults=now.faults,
              failures=now.failures)
