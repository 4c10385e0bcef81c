"""Accounting for the ingest's failure tests: what the broker counted, what the database stored, dead-lettered or
still holds parked, for a set of sent messages (msg_id → vehicle id)."""
from __future__ import annotations

from collections import Counter

import requests

from fleetcore.emqx_api import INGEST_ACTIONS
from fleetctl.stack import API_KEY_NAME
from tests.support.database import rows
from tests.support.waiting import wait_until


def broker_counts(stack) -> Counter:
    """failed and dropped, summed over the broker's pgsql actions (GET /api/v5/actions/{id}/metrics)."""
    total: Counter = Counter()
    for action in INGEST_ACTIONS:
        response = requests.get(f"{stack.url('emqx_api')}/api/v5/actions/{action}/metrics",
                                auth=(API_KEY_NAME, stack.secrets["FLEET_EMQX_API_SECRET"]), timeout=5)
        assert response.status_code == 200, response.text
        metrics = response.json()["metrics"]
        total["failed"] += metrics.get("failed", 0)
        total["dropped"] += metrics.get("dropped", 0)
    return total


def stored_and_dead(stack, vehicle_ids: list[str]) -> tuple[Counter, dict[str, str]]:
    """How often each msg_id of these vehicles is stored (telemetry, status, mission events), and the dead letters
    (msg_id → reason) that carry a payload."""
    stored = Counter({r["msg_id"]: r["n"] for r in rows(
        stack.database_url,
        "SELECT msg_id, count(*) AS n FROM (SELECT msg_id FROM telemetry WHERE vehicle_id = ANY(%(v)s) "
        "UNION ALL SELECT msg_id FROM vehicle_status WHERE vehicle_id = ANY(%(v)s) "
        "UNION ALL SELECT msg_id FROM mission_events WHERE actor_type = 'vehicle' AND actor_id = ANY(%(v)s)) m "
        "GROUP BY msg_id", {"v": vehicle_ids})})
    dead = {r["msg_id"]: r["reason"] for r in rows(
        stack.database_url, "SELECT convert_from(payload, 'UTF8')::jsonb ->> 'msg_id' AS msg_id, reason "
        "FROM rejected_messages WHERE clientid = ANY(%s) AND payload IS NOT NULL", (vehicle_ids,))}
    return stored, dead


def parked_count(stack, vehicle_ids: list[str]) -> int:
    return rows(stack.database_url, "SELECT count(*) AS n FROM ingest.parked WHERE clientid = ANY(%s)",
                (vehicle_ids,))[0]["n"]


def settle(stack, sent: dict[str, str], timeout: float = 60) -> dict[str, int]:
    """Wait until nothing of these vehicles is parked and every sent message is stored or dead-lettered; then the
    exact figures."""
    vehicle_ids = sorted(set(sent.values()))

    def accounted() -> bool:
        if parked_count(stack, vehicle_ids):
            return False
        stored, dead = stored_and_dead(stack, vehicle_ids)
        return set(sent) <= set(stored) | set(dead)
    wait_until(accounted, timeout=timeout, interval=0.2,
               message=lambda: f"not every message was stored or dead-lettered; parked: "
                               f"{parked_count(stack, vehicle_ids)}")
    stored, dead = stored_and_dead(stack, vehicle_ids)
    return {"sent": len(sent), "stored": sum(1 for m in sent if m in stored),
            "dead_lettered": sum(1 for m in sent if m in dead),
            "both": sum(1 for m in sent if m in stored and m in dead),
            "duplicates": sum(stored[m] - 1 for m in sent if stored[m] > 1),
            "lost": sum(1 for m in sent if m not in stored and m not in dead)}
