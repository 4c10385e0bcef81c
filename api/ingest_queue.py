"""The telemetry queue's consumer, in the worker process, on a thread and connection of its own.

The broker appends telemetry to ``ingest.telemetry_inbox`` (sql/100_telemetry_queue.sql) and nothing more; this
thread applies it in sets: ``ingest.drain_telemetry()`` (sql/code/20_telemetry.sql) takes up to
``WORKER_TELEMETRY_SET_SIZE`` of the oldest messages, stores the plain points with one INSERT and one UPDATE of the
vehicles' latest state, and sends everything else through the per-message path (dead letters, batches, skewed
clocks, parking). While a drain comes back full it drains again at once; otherwise it waits
``WORKER_TELEMETRY_POLL_S`` — the most a point waits in the queue on a quiet system, and the price of it is one
cheap query per interval. Drains take turns by a transaction-level advisory lock in the database, so this runs in
every worker, leader or standby: a standby keeps telemetry flowing while the leader is busy or gone.

A drain never fails for a message's sake (the per-message path parks what it cannot apply). What can still fail it
rolls its transaction back — the messages stay queued, nothing is lost — and the thread tries again with back-off:

* the database going away (PostgreSQL restarting, the network): ``telemetry_drain.db_error``, WARNING;
* the queue itself locked past ``lock_timeout``, a cancelled statement, a deadlock on the queue (a migration or an
  administrator at work): ``telemetry_drain.deferred``, WARNING;
* anything else — parking itself failing (a full disk, a revoked permission): ``telemetry_drain.failed``, CRITICAL.

Either way the queue's depth and age on the api's ``/metrics`` (``fleet_ingest_telemetry_queued``,
``fleet_ingest_telemetry_queue_oldest_seconds``) grow, and docs/OPERATIONS.md says what to do.
"""
from __future__ import annotations

import logging
import threading
import time

import psycopg2

from api.config import WorkerConfig
from fleetcore.db import connect
from fleetcore.logs import log_event

log = logging.getLogger("api.ingest_queue")


# SQLSTATE classes of a drain that met someone else's work on the queue and will succeed later: 40 (deadlock,
# serialization), 55 (lock not available), 57 (query canceled, e.g. statement_timeout)
TRANSIENT_CLASSES = ("40", "55", "57")


def _log_failure(exc: psycopg2.Error) -> str:
    """Log a failed drain at the level it deserves; the thread's state for /healthz."""
    error = str(exc).strip()[:300]
    if exc.pgcode is None:          # no answer from the server: the connection
        log_event(log, "telemetry_drain.db_error", logging.WARNING, error=error)
        return "waiting_for_database"
    if exc.pgcode[:2] in TRANSIENT_CLASSES:
        log_event(log, "telemetry_drain.deferred", logging.WARNING, sqlstate=exc.pgcode, error=error)
        return "deferred"
    log_event(log, "telemetry_drain.failed", logging.CRITICAL, sqlstate=exc.pgcode, error=error)
    return "failing"


class TelemetryDrain:
    """``ingest.drain_telemetry()`` in a loop (see the module doc); its state and totals for ``/healthz``."""

    def __init__(self, config: WorkerConfig, stopping: threading.Event) -> None:
        self.config = config
        self.stopping = stopping
        self.state = "starting"
        self.last_turn = time.monotonic()
        self.totals = {"taken": 0, "in_sets": 0, "one_by_one": 0}
        self._thread = threading.Thread(target=self.run, name="telemetry-drain", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def health(self) -> dict:
        return {"state": self.state, "last_turn_s_ago": round(time.monotonic() - self.last_turn, 1), **self.totals}

    def run(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                self._drain()
                backoff = 1.0
                continue
            except OSError as exc:
                log_event(log, "telemetry_drain.db_error", logging.WARNING, error=str(exc).strip()[:200])
                self.state = "waiting_for_database"
            except psycopg2.Error as exc:                          # its set stays queued
                self.state = _log_failure(exc)
            except Exception:
                log.exception("telemetry drain failed", extra={"event": "telemetry_drain.crash"})
                self.state = "restarting"
            self.last_turn = time.monotonic()
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, 30.0)

    def _drain(self) -> None:
        conn = connect(self.config.database_url, autocommit=True, application_name="api-telemetry-drain")
        try:
            with conn.cursor() as cur:
                self.state = "draining"
                while not self.stopping.is_set():
                    cur.execute("SELECT taken, in_sets, one_by_one FROM ingest.drain_telemetry(%s)",
                                (self.config.telemetry_set_size,))
                    taken, in_sets, one_by_one = cur.fetchone()
                    self.last_turn = time.monotonic()
                    if taken:
                        self.totals["taken"] += taken
                        self.totals["in_sets"] += in_sets
                        self.totals["one_by_one"] += one_by_one
                        log_event(log, "telemetry_drain.applied", logging.DEBUG, taken=taken, in_sets=in_sets,
                                  one_by_one=one_by_one)
                    if taken < self.config.telemetry_set_size:
                        self.stopping.wait(self.config.telemetry_poll_s)
        finally:
            conn.close()
