"""The audit log: who did what to which object."""
from __future__ import annotations


def record(cur, actor_type: str, actor_id: str | None, action: str, target_type: str | None = None,
           target_id: str | None = None, detail: dict | None = None) -> None:
    cur.execute("INSERT INTO audit_log (actor_type, actor_id, action, target_type, target_id, detail) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (actor_type, actor_id, action, target_type, target_id, detail or {}))


def page(cur, filters: dict, after_id: int | None, limit: int) -> list[dict]:
    """Audit rows newest first, filtered by actor, action, target and time; ``limit + 1`` rows (is there more?)."""
    cur.execute("""
        SELECT id, at, actor_type, actor_id, action, target_type, target_id, detail FROM audit_log
         WHERE (%(actor)s::text IS NULL OR actor_id = %(actor)s)
           AND (%(action)s::text IS NULL OR action = %(action)s)
           AND (%(target_type)s::text IS NULL OR target_type = %(target_type)s)
           AND (%(target_id)s::text IS NULL OR target_id = %(target_id)s)
           AND (%(from_)s::timestamptz IS NULL OR at >= %(from_)s)
           AND (%(to)s::timestamptz IS NULL OR at < %(to)s)
           AND (%(after)s::bigint IS NULL OR id < %(after)s)
         ORDER BY id DESC
         LIMIT %(limit)s""", {**{k: filters.get(k) for k in ("actor", "action", "target_type", "target_id", "from_",
                                                              "to")},
                              "after": after_id, "limit": limit + 1})
    return cur.fetchall()
