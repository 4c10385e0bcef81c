"""The audit log: who did what to which object."""
from __future__ import annotations


def record(cur, actor_type: str, actor_id: str | None, action: str, target_type: str | None = None,
           target_id: str | None = None, detail: dict | None = None) -> None:
    cur.execute("INSERT INTO audit_log (actor_type, actor_id, action, target_type, target_id, detail) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (actor_type, actor_id, action, target_type, target_id, detail or {}))
