"""Alarms in the worker process: the rules' evaluation and the webhook deliveries, on a thread of their own.

Every ``ALARM_EVALUATE_INTERVAL_S`` it calls ``alarm_evaluate()`` (sql/code/80_alarms.sql), which raises the alarms
whose condition holds and notes the end of the others; every change of an alarm queues one delivery per matching
webhook in the same transaction and wakes this thread (NOTIFY fleet_webhook). A delivery is an HTTP POST of the
queued JSON, signed ``X-Fleet-Signature: t=<unix time>,v1=<hex HMAC-SHA-256 of "<t>.<body>">`` with the webhook's
secret. A 2xx answer delivers it; anything else (another status, a redirect, a time-out, a refused connection) is
retried after ``WEBHOOK_BACKOFF_S`` doubling up to ``WEBHOOK_BACKOFF_MAX_S``, and after ``WEBHOOK_MAX_ATTEMPTS`` it
is ``failed``. Every attempt is in the delivery log (``GET /api/v1/alarm-webhooks/{id}/deliveries``).

Like the dispatcher, one worker at a time does this (a PostgreSQL advisory lock of its own); the others stand by.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import select
import threading
import time

import psycopg2
import requests

from api.config import WorkerConfig
from api.queries import alarms
from fleetcore.db import Database, connect
from fleetcore.logs import log_event

log = logging.getLogger("api.notifier")
NOTIFIER_LOCK_KEY = 0x666C7461  # "flta"
STANDBY_RETRY_S = 5.0
DELIVERY_BATCH = 5      # deliveries claimed at once: a slow receiver delays the rules by at most this many time-outs
SIGNATURE_HEADER = "X-Fleet-Signature"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Fleet-Signature value a receiver recomputes to trust a delivery (and its time, against replays)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class Notifier:
    def __init__(self, config: WorkerConfig, stopping: threading.Event) -> None:
        self.config = config
        self.stopping = stopping
        self.database = Database(config.database_url, max_connections=2, application_name="api-notifier")
        self.role = "starting"
        self.last_turn = time.monotonic()
        self.http = requests.Session()
        self._thread = threading.Thread(target=self.run, name="notifier", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def health(self) -> dict:
        return {"role": self.role, "last_turn_s_ago": round(time.monotonic() - self.last_turn, 1)}

    def _turned(self, role: str | None = None) -> None:
        self.last_turn = time.monotonic()
        if role:
            self.role = role

    def run(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                self._lead()
                backoff = 1.0
            except (psycopg2.Error, OSError) as exc:
                log_event(log, "notifier.db_error", logging.WARNING, error=str(exc).strip()[:200])
                self._turned("waiting_for_database")
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception:
                log.exception("notifier loop failed", extra={"event": "notifier.crash"})
                self._turned("restarting")
                self.stopping.wait(backoff)

    def _lead(self) -> None:
        conn = connect(self.config.database_url, autocommit=True, application_name="api-notifier-listen")
        try:
            with conn.cursor() as cur:
                while not self.stopping.is_set():
                    cur.execute("SELECT pg_try_advisory_lock(%s)", (NOTIFIER_LOCK_KEY,))
                    if cur.fetchone()[0]:
                        break
                    self._turned("standby")
                    self.stopping.wait(STANDBY_RETRY_S)
                else:
                    return
                cur.execute("LISTEN fleet_webhook")
            self._turned("leader")
            log_event(log, "notifier.leading")
            self._loop(conn)
        finally:
            conn.close()

    def _loop(self, conn) -> None:
        next_evaluation = 0.0
        while not self.stopping.is_set():
            self._turned()
            now = time.monotonic()
            if now >= next_evaluation:
                self.evaluate()
                next_evaluation = now + self.config.alarm_evaluate_interval_s
            due_in = self.deliver_due(until=next_evaluation)
            wait = max(0.0, min(next_evaluation - time.monotonic(), due_in if due_in is not None else 3600.0))
            if select.select([conn], [], [], wait)[0]:
                conn.poll()
                conn.notifies.clear()

    def evaluate(self) -> tuple[int, int]:
        with self.database.transaction() as cur:
            raised, ended = alarms.evaluate(cur)
        if raised or ended:
            log_event(log, "alarms.evaluated", raised=raised, ended=ended)
        return raised, ended

    def deliver_due(self, until: float) -> float | None:
        """Post the deliveries whose time has come, until none is left or it is time (monotonic) ``until``; the
        seconds until the next one is due (None: none waits)."""
        lease_s = self.config.webhook_timeout_s * 2 + 5
        while not self.stopping.is_set():
            with self.database.transaction() as cur:
                batch = alarms.claim_due_deliveries(cur, DELIVERY_BATCH, lease_s)
            for delivery in batch:
                self._deliver(delivery)
            if len(batch) < DELIVERY_BATCH or time.monotonic() >= until:
                break
        with self.database.transaction() as cur:
            return alarms.next_due_in_s(cur)

    def _deliver(self, delivery: dict) -> None:
        body = json.dumps(delivery["payload"], separators=(",", ":"), sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "fleet-alarms/1",
                   "X-Fleet-Event": delivery["payload"]["event"], "X-Fleet-Delivery": str(delivery["id"]),
                   SIGNATURE_HEADER: signature(delivery["secret"], int(time.time()), body)}
        status, error = None, None
        try:
            response = self.http.post(delivery["url"], data=body, headers=headers, allow_redirects=False,
                                      timeout=self.config.webhook_timeout_s)
            status = response.status_code
            response.close()
        except requests.RequestException as exc:
            error = type(exc).__name__   # not str(exc): it repeats the URL, which may hold credentials
        delivered = status is not None and 200 <= status < 300
        attempt = delivery["attempts"] + 1
        if delivered or attempt >= self.config.webhook_max_attempts:
            retry_in = None
        else:
            retry_in = min(self.config.webhook_backoff_s * 2 ** (attempt - 1), self.config.webhook_backoff_max_s)
        if status is not None and not delivered:
            error = f"HTTP {status}"
        with self.database.transaction() as cur:
            alarms.record_attempt(cur, delivery["id"], delivered, status, error, retry_in)
        outcome = "delivered" if delivered else ("retry" if retry_in is not None else "failed")
        log_event(log, f"webhook.{outcome}", logging.INFO if delivered else logging.WARNING,
                  delivery=delivery["id"], attempt=attempt, status=status, error=error, retry_in_s=retry_in)
