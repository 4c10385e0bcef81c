"""SQL for operator accounts and their fleet memberships."""
from __future__ import annotations

_SELECT = """
SELECT u.id, u.username, u.role, u.active, u.created_at, u.updated_at,
       COALESCE(ARRAY(SELECT fleet_id FROM user_fleets f WHERE f.user_id = u.id ORDER BY fleet_id), '{}') AS fleets
  FROM users u
"""


def list_users(cur, limit: int, offset: int) -> tuple[list[dict], int]:
    cur.execute("SELECT count(*) AS n FROM users")
    total = cur.fetchone()["n"]
    cur.execute(_SELECT + " ORDER BY u.id LIMIT %s OFFSET %s", (limit, offset))
    return cur.fetchall(), total


def get_user(cur, user_id: int) -> dict | None:
    cur.execute(_SELECT + " WHERE u.id = %s", (user_id,))
    return cur.fetchone()


def username_taken(cur, username: str) -> bool:
    cur.execute("SELECT 1 FROM users WHERE lower(username) = lower(%s)", (username,))
    return cur.fetchone() is not None


def create_user(cur, username: str, password_hash: str, role: str) -> int:
    cur.execute("INSERT INTO users (username, password_hash, role) VALUES (%s, %s, %s) RETURNING id",
                (username, password_hash, role))
    return cur.fetchone()["id"]


def admin_exists(cur) -> bool:
    cur.execute("SELECT 1 FROM users WHERE role = 'admin' LIMIT 1")
    return cur.fetchone() is not None


def create_first_admin(cur, password_hash: str) -> bool:
    """Create the operator 'admin' unless an admin already exists; True if it was created. Concurrent callers
    are serialised, so exactly one creates it."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('fleet.create_first_admin'))")
    if admin_exists(cur):
        return False
    cur.execute("INSERT INTO users (username, password_hash, role) VALUES ('admin', %s, 'admin') "
                "ON CONFLICT (username) DO NOTHING RETURNING id", (password_hash,))
    return cur.fetchone() is not None


def update_user(cur, user_id: int, changes: dict) -> None:
    allowed = {"password_hash", "role", "active"}
    sets = [(k, v) for k, v in changes.items() if k in allowed]
    if not sets:
        return
    assignments = ", ".join(f"{k} = %s" for k, _ in sets)
    cur.execute(f"UPDATE users SET {assignments}, updated_at = now() WHERE id = %s",  # noqa: S608 - fixed keys
                [v for _, v in sets] + [user_id])


def set_fleets(cur, user_id: int, fleets: list[str]) -> None:
    cur.execute("DELETE FROM user_fleets WHERE user_id = %s", (user_id,))
    for fleet_id in sorted(set(fleets)):
        cur.execute("INSERT INTO user_fleets (user_id, fleet_id) VALUES (%s, %s)", (user_id, fleet_id))


def missing_fleets(cur, fleets: list[str]) -> list[str]:
    if not fleets:
        return []
    cur.execute("SELECT id FROM fleets WHERE id = ANY(%s)", (list(fleets),))
    found = {row["id"] for row in cur.fetchall()}
    return sorted(set(fleets) - found)


def delete_user(cur, user_id: int) -> bool:
    cur.execute("DELETE FROM users WHERE id = %s", (user_id,))
    return cur.rowcount == 1


def count_admins(cur, excluding: int | None = None) -> int:
    cur.execute("SELECT count(*) AS n FROM users WHERE role = 'admin' AND active AND id IS DISTINCT FROM %s",
                (excluding,))
    return cur.fetchone()["n"]
