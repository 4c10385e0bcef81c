"""Waiting until the broker's rule actions have processed what they were given — the way production requires.

A QoS 1 PUBACK means the broker has the message, not that it is stored: EMQX 5.10.4 acknowledges on receipt and its
rule actions write to PostgreSQL (or call authsvc) later, from buffer workers (docs/BROKER_STANDIN.md), and so does
the stand-in. A test that reads the database right after a PUBACK races. It waits here instead, on EMQX's own
metrics (``GET /api/v5/actions/{id}/metrics``, the same API in production): every action has answered every
request it was given — ``matched == success + failed + dropped`` with nothing queuing or in flight — within a
deadline. Because a broker evaluates the rules before it sends the PUBACK, whatever was acknowledged is in
``matched`` by then.
"""
from __future__ import annotations

from typing import Any

import requests

from tests.support.waiting import wait_until


class RuleActions:
    """The rule actions of one broker, seen through its REST API (``/api/v5``, basic auth with an API key)."""

    def __init__(self, api_url: str, key: str, secret: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = (key, secret)
        self._action_ids: list[str] | None = None

    @classmethod
    def of_stack(cls, stack: Any) -> RuleActions:
        """The embedded stack's broker (fleetctl.stack.Stack), with the api's own EMQX API key."""
        from fleetctl.stack import API_KEY_NAME
        return cls(stack.url("emqx_api"), API_KEY_NAME, stack.secrets["FLEET_EMQX_API_SECRET"])

    def _get(self, path: str) -> Any:
        response = self.session.get(f"{self.api_url}/api/v5{path}", timeout=5)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:200]}"
        return response.json()

    def action_ids(self) -> list[str]:
        """Every action an enabled rule uses (GET /api/v5/rules), once."""
        if self._action_ids is None:
            rules = self._get("/rules?limit=1000")["data"]
            self._action_ids = sorted({a for rule in rules if rule.get("enable", True) for a in rule["actions"]
                                       if isinstance(a, str)})
        return self._action_ids

    def metrics(self, action_id: str) -> dict[str, Any]:
        return self._get(f"/actions/{action_id}/metrics")["metrics"]

    def rule_metrics(self, rule_id: str) -> dict[str, Any]:
        return self._get(f"/rules/{rule_id}/metrics")["metrics"]

    def pending(self) -> dict[str, int]:
        """Requests not yet answered, per action (only the actions that have some)."""
        left = {}
        for action_id in self.action_ids():
            m = self.metrics(action_id)
            unanswered = m["matched"] - m["success"] - m["failed"] - m["dropped"]
            if unanswered or m["queuing"] or m["inflight"]:
                left[action_id] = max(unanswered, m["queuing"] + m["inflight"])
        return left

    def wait_processed(self, timeout: float = 30.0) -> None:
        """Return once every action has answered every request it was given; fail after ``timeout`` s."""
        wait_until(lambda: not self.pending(), timeout, interval=0.02,
                   message=lambda: f"rule actions still busy: {self.pending()}")
