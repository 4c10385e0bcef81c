"""Read the database the way an investigator would: short autocommit queries, dict rows."""
from __future__ import annotations

import psycopg2
from psycopg2.extras import RealDictCursor


def rows(url: str, sql: str, params: tuple | dict = ()) -> list[dict]:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor(cursor_factory=RealDictCursor) as cur:
            cur.execute(sql, params)
            return [dict(r) for r in cur.fetchall()]
    finally:
        conn.close()


def rejected(url: str, clientid: str) -> list[dict]:
    """The dead-lettered messages of one client, oldest first."""
    return rows(url, "SELECT clientid, topic, reason FROM rejected_messages WHERE clientid = %s ORDER BY id",
                (clientid,))
