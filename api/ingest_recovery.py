"""What the worker does so that no message the broker accepted goes missing unnoticed (docs/ARCHITECTURE.md,
"Ingest that cannot drop a batch"; runbook in docs/OPERATIONS.md, "Ingest: parked messages, the telemetry queue and
failed batches"). The telemetry queue's drain is in api/ingest_queue.py.

* ``ParkedIngest`` re-applies the messages the ingest parked (``ingest.retry_parked()``,
  sql/code/25_ingest_parked.sql) when told that something was parked and whenever a parked one is due.
* ``BrokerActionWatch`` reads the broker's counters of the pgsql actions. EMQX drops a batch that PostgreSQL
  rejects (docs/EMQX.md §5.6a); the ingest is built so that this cannot happen for anything a vehicle sends or
  anything the database does on its own, so a rise in ``failed`` or ``dropped`` means something nobody can prevent
  from SQL (a full disk, a revoked permission, a dropped table, a buffer overflow) and is logged at CRITICAL.
"""
from __future__ import annotations

import logging

import psycopg2
import psycopg2.extensions

from fleetcore.emqx_api import INGEST_ACTIONS, EmqxApi, EmqxApiError
from fleetcore.logs import log_event

log = logging.getLogger("api.ingest")
PAGE = 500           # parked rows per transaction
IDLE_CHECK_S = 5.0   # how often to look for parked rows when nothing said there are any


class ParkedIngest:
    """Drives ``ingest.retry_parked()`` from the worker's loop, on the worker's own connection."""

    def __init__(self) -> None:
        self.totals = {"applied": 0, "failed": 0, "dead_lettered": 0}

    def retry(self, conn: psycopg2.extensions.connection) -> float:
        """Re-apply what is due, a page per transaction; the seconds until the next parked row is due."""
        try:
            with conn.cursor() as cur:
                while True:
                    cur.execute("SELECT applied, failed, dead_lettered, waiting FROM ingest.retry_parked(%s)",
                                (PAGE,))
                    applied, failed, dead_lettered, waiting = cur.fetchone()
                    self._report(applied, failed, dead_lettered, waiting)
                    if applied + dead_lettered == 0 or applied + failed + dead_lettered + waiting < PAGE:
                        break
                cur.execute("SELECT GREATEST(0, extract(epoch FROM min(next_attempt_at) - now()))::float8 "
                            "FROM ingest.parked")
                due = cur.fetchone()[0]
        except psycopg2.OperationalError:
            raise                  # the connection is gone: the worker's loop reconnects
        except psycopg2.Error as exc:
            # e.g. the worker's role lost a permission: nothing parked can be applied until someone acts
            log_event(log, "ingest.retry_failed", logging.CRITICAL, error=str(exc).strip()[:300])
            return IDLE_CHECK_S
        return IDLE_CHECK_S if due is None else min(IDLE_CHECK_S, due)

    def _report(self, applied: int, failed: int, dead_lettered: int, waiting: int) -> None:
        self.totals["applied"] += applied
        self.totals["failed"] += failed
        self.totals["dead_lettered"] += dead_lettered
        if dead_lettered:
            log_event(log, "ingest.dead_lettered", logging.ERROR, count=dead_lettered, reason="ingest_failed",
                      hint="see rejected_messages.detail; docs/OPERATIONS.md")
        if applied or failed:
            log_event(log, "ingest.parked_retried", logging.WARNING if failed else logging.INFO, applied=applied,
                      failed=failed, waiting=waiting)


class BrokerActionWatch:
    """Logs at CRITICAL when the broker's pgsql actions count a failed or dropped message."""

    def __init__(self, emqx: EmqxApi, actions: tuple[str, ...] = INGEST_ACTIONS) -> None:
        self.emqx = emqx
        self.actions = actions
        self.seen: dict[str, tuple[int, int]] = {}

    def check(self) -> dict[str, tuple[int, int]]:
        """One look at every action; returns (failed, dropped) per action it could read."""
        for action in self.actions:
            try:
                metrics = self.emqx.action_metrics(action)
            except EmqxApiError as exc:
                log_event(log, "ingest.broker_metrics_unavailable", logging.WARNING, action=action,
                          error=str(exc)[:200])
                return self.seen
            if metrics is None:
                log_event(log, "ingest.broker_action_missing", logging.CRITICAL, action=action)
                continue
            counts = (int(metrics.get("failed", 0)), int(metrics.get("dropped", 0)))
            before = self.seen.get(action, (0, 0))
            if counts[0] > before[0] or counts[1] > before[1]:
                log_event(log, "ingest.broker_dropped_messages", logging.CRITICAL, action=action,
                          failed=counts[0] - before[0], dropped=counts[1] - before[1], failed_total=counts[0],
                          dropped_total=counts[1],
                          hint="docs/OPERATIONS.md, Ingest: parked messages, the telemetry queue and failed batches")
            self.seen[action] = counts
        return self.seen
