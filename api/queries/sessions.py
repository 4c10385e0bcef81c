"""SQL for operator sessions and refresh tokens (the login throttle's is in api/throttle.py)."""
from __future__ import annotations


def find_user_for_login(cur, username: str) -> dict | None:
    cur.execute("SELECT id, username, password_hash, role, active FROM users WHERE username = %s", (username,))
    return cur.fetchone()


def open_session(cur, user_id: int, ttl_s: int, client_addr: str, user_agent: str) -> str:
    cur.execute("INSERT INTO auth_sessions (user_id, expires_at, client_addr, user_agent) "
                "VALUES (%s, now() + make_interval(secs => %s), %s, %s) RETURNING id::text",
                (user_id, ttl_s, client_addr, user_agent[:200]))
    return cur.fetchone()["id"]


def add_refresh_token(cur, session_id: str, token_hash: bytes) -> None:
    cur.execute("INSERT INTO refresh_tokens (token_hash, session_id) VALUES (%s, %s)", (token_hash, session_id))


def lock_refresh_token(cur, token_hash: bytes) -> dict | None:
    cur.execute("""
        SELECT t.session_id::text AS session_id, t.used_at, s.revoked_at, s.expires_at < now() AS expired,
               u.id AS user_id, u.username, u.role, u.active
          FROM refresh_tokens t
          JOIN auth_sessions s ON s.id = t.session_id
          JOIN users u ON u.id = s.user_id
         WHERE t.token_hash = %s
           FOR UPDATE OF t, s""", (token_hash,))
    return cur.fetchone()


def mark_refresh_token_used(cur, token_hash: bytes, session_id: str) -> None:
    cur.execute("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = %s", (token_hash,))
    cur.execute("UPDATE auth_sessions SET last_refreshed_at = now() WHERE id = %s", (session_id,))


def revoke_session(cur, session_id: str, reason: str) -> None:
    cur.execute("UPDATE auth_sessions SET revoked_at = now(), revoked_reason = %s "
                "WHERE id = %s AND revoked_at IS NULL", (reason, session_id))


def revoke_user_sessions(cur, user_id: int, reason: str) -> None:
    cur.execute("UPDATE auth_sessions SET revoked_at = now(), revoked_reason = %s "
                "WHERE user_id = %s AND revoked_at IS NULL", (reason, user_id))
