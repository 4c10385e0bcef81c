"""Client for the broker's REST API (EMQX ``/api/v5``; the stand-in serves the same endpoints).

The services use it to publish commands (``POST /api/v5/publish``), kick a client, and clear its authorization
cache; tests and benchmarks read the rule actions' metrics (``unanswered``: what the actions have not yet stored,
failed or dropped — a PUBACK does not wait for them, docs/BROKER_STANDIN.md). Authentication is HTTP Basic with an
API key from the broker's bootstrap file (docs/EMQX.md §6).
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests


class EmqxApiError(RuntimeError):
    """The broker answered with an unexpected status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EmqxUnavailable(EmqxApiError):
    """The broker API could not be reached (connection refused, timeout) or answered 503."""


# The rule-engine actions that write vehicle data into PostgreSQL (emqx/emqx.conf, actions.pgsql.*). EMQX drops a
# batch that PostgreSQL rejects and only counts it (docs/EMQX.md §5.6a): the worker watches these counters.
INGEST_ACTIONS = ("pgsql:telemetry_ingest", "pgsql:status_ingest", "pgsql:mission_ingest", "pgsql:connection_ingest",
                  "pgsql:presence_ingest", "pgsql:authz_denied_ingest")


@dataclass(frozen=True)
class PublishResult:
    delivered: bool        # 200: at least one subscriber session got it; 202: nobody subscribed (dropped)
    message_id: str | None


class EmqxApi:
    def __init__(self, base_url: str, key: str, secret: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = (key, secret)
        self.timeout = timeout
        self._local = threading.local()

    @property
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.auth = self.auth
            self._local.session = session
        return session

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self._session.request(method, f"{self.base_url}{path}", timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise EmqxUnavailable(f"broker API {method} {path} failed: {exc.__class__.__name__}") from exc
        if response.status_code == 503:
            raise EmqxUnavailable(f"broker API {method} {path}: 503 {response.text[:200]}", 503)
        return response

    def publish(self, topic: str, payload: dict[str, Any] | str | bytes, qos: int = 1,
                retain: bool = False) -> PublishResult:
        if isinstance(payload, dict):
            payload = json.dumps(payload, separators=(",", ":"))
        elif isinstance(payload, bytes):
            payload = payload.decode("utf-8")
        response = self._request("POST", "/api/v5/publish",
                                 json={"topic": topic, "payload": payload, "qos": qos, "retain": retain})
        if response.status_code == 200:
            return PublishResult(True, response.json().get("id"))
        if response.status_code == 202:
            return PublishResult(False, None)
        raise EmqxApiError(f"publish to {topic}: {response.status_code} {response.text[:200]}", response.status_code)

    def kick(self, clientid: str) -> bool:
        """Disconnect a client; False if it was not connected."""
        response = self._request("DELETE", f"/api/v5/clients/{quote(clientid, safe='')}")
        if response.status_code == 204:
            return True
        if response.status_code == 404:
            return False
        raise EmqxApiError(f"kick {clientid}: {response.status_code} {response.text[:200]}", response.status_code)

    def clear_authz_cache(self, clientid: str) -> bool:
        response = self._request("DELETE", f"/api/v5/clients/{quote(clientid, safe='')}/authorization/cache")
        if response.status_code == 204:
            return True
        if response.status_code == 404:
            return False
        raise EmqxApiError(f"clear authz cache of {clientid}: {response.status_code}", response.status_code)

    def client(self, clientid: str) -> dict[str, Any] | None:
        response = self._request("GET", f"/api/v5/clients/{quote(clientid, safe='')}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise EmqxApiError(f"get client {clientid}: {response.status_code}", response.status_code)
        return response.json()

    def action_metrics(self, action_id: str) -> dict[str, Any] | None:
        """``GET /api/v5/actions/{type:name}/metrics``: the cluster-wide counters (matched, success, failed,
        dropped …), or None if there is no such action."""
        response = self._request("GET", f"/api/v5/actions/{quote(action_id, safe=':')}/metrics")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise EmqxApiError(f"metrics of {action_id}: {response.status_code}", response.status_code)
        return response.json().get("metrics") or {}

    def is_up(self) -> bool:
        try:
            return self._request("GET", "/api/v5/status").status_code == 200
        except EmqxUnavailable:
            return False

    def _get_json(self, path: str) -> Any:
        response = self._request("GET", path)
        if response.status_code != 200:
            raise EmqxApiError(f"GET {path}: {response.status_code} {response.text[:200]}", response.status_code)
        return response.json()

    def rule_action_ids(self) -> list[str]:
        """Every action an enabled rule sends to (``GET /api/v5/rules``)."""
        rules = self._get_json("/api/v5/rules?limit=1000")["data"]
        return sorted({a for rule in rules if rule.get("enable", True) for a in rule.get("actions", [])
                       if isinstance(a, str)})

    def rule_metrics(self, rule_id: str) -> dict[str, Any]:
        return self._get_json(f"/api/v5/rules/{quote(rule_id, safe='')}/metrics")["metrics"]

    def unanswered(self, action_ids: list[str]) -> dict[str, int]:
        """Requests each action was given and has not answered yet (neither success, failed nor dropped), for the
        actions that have some. Empty: everything the broker acknowledged so far has been processed."""
        left = {}
        for action_id in action_ids:
            m = self.action_metrics(action_id)
            if m is None:
                raise EmqxApiError(f"no action {action_id}", 404)
            pending = max(m["matched"] - m["success"] - m["failed"] - m["dropped"], m["queuing"] + m["inflight"])
            if pending:
                left[action_id] = pending
        return left
