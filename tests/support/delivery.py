"""Waiting until the broker's rule actions have processed what they were given — the way production requires.

A QoS 1 PUBACK means the broker has the message, not that it is stored: EMQX 5.10.4 acknowledges on receipt and its
rule actions write to PostgreSQL (or call authsvc) later, from buffer workers (docs/BROKER_STANDIN.md), and so does
the stand-in. A test that reads the database right after a PUBACK races. It waits here instead, on EMQX's own
metrics (``GET /api/v5/actions/{id}/metrics``, the same API in production): every action has answered every
request it was given — ``matched == success + failed + dropped`` with nothing queuing or in flight — within a
deadline. Because a broker evaluates the rules before it sends the PUBACK, whatever was acknowledged is in
``matched`` by then. Telemetry then waits in the queue for the worker (sql/100_telemetry_queue.sql): with the
stack's worker running, processed also means the queue is empty — the drain that took the last message has
committed.
"""
from __future__ import annotations

from typing import Any

import psycopg2

from fleetcore.emqx_api import EmqxApi
from tests.support.waiting import wait_until


class RuleActions:
    """The rule actions of one broker, seen through its REST API (``/api/v5``, basic auth with an API key)."""

    def __init__(self, api_url: str, key: str, secret: str, queue_database_url: str | None = None) -> None:
        self.api = EmqxApi(api_url, key, secret)
        self._action_ids: list[str] | None = None
        self.queue_database_url = queue_database_url   # where the worker drains the telemetry queue, if it runs

    @classmethod
    def of_stack(cls, stack: Any) -> RuleActions:
        """The embedded stack's broker (fleetctl.stack.Stack), with the api's own EMQX API key."""
        from fleetctl.stack import API_KEY_NAME
        worker = any(c.name == "worker" for c in stack.started)
        return cls(stack.url("emqx_api"), API_KEY_NAME, stack.secrets["FLEET_EMQX_API_SECRET"],
                   stack.database_url if worker else None)

    def action_ids(self) -> list[str]:
        if self._action_ids is None:
            self._action_ids = self.api.rule_action_ids()
        return self._action_ids

    def metrics(self, action_id: str) -> dict[str, Any]:
        metrics = self.api.action_metrics(action_id)
        assert metrics is not None, f"the broker has no action {action_id}"
        return metrics

    def rule_metrics(self, rule_id: str) -> dict[str, Any]:
        return self.api.rule_metrics(rule_id)

    def pending(self) -> dict[str, int]:
        """Requests not yet answered, per action (only the actions that have some)."""
        return self.api.unanswered(self.action_ids())

    def wait_processed(self, timeout: float = 30.0) -> None:
        """Return once every action has answered every request it was given, and the worker has applied the queued
        telemetry; fail after ``timeout`` s."""
        wait_until(lambda: not self.pending(), timeout, interval=0.02,
                   message=lambda: f"rule actions still busy: {self.pending()}")
        if self.queue_database_url:
            wait_until(lambda: not self.queued_telemetry(), timeout, interval=0.02,
                       message=lambda: f"{self.queued_telemetry()} telemetry messages still queued")

    def queued_telemetry(self) -> int:
        with psycopg2.connect(self.queue_database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT queued FROM ingest.telemetry_queue_summary()")
            queued = cur.fetchone()[0]
        conn.close()
        return queued
