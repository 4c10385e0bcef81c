"""The services' connection pool survives the database dropping its connections (a restart, a failover,
pg_terminate_backend): the next transaction gets a live connection instead of an error."""
from __future__ import annotations

import psycopg2

from fleetcore.db import Database
from tests.support.waiting import wait_until


def test_connections_killed_by_the_server_are_replaced_transparently(db_url, pg_admin_url):
    database = Database(db_url, max_connections=3, application_name="pool-test")
    try:
        for _ in range(3):
            with database.transaction() as cur:
                cur.execute("SELECT pg_backend_pid() AS pid")
        admin = psycopg2.connect(pg_admin_url)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'pool-test') killed")
            assert cur.fetchone()[0] >= 1
            # pg_terminate_backend only signals: wait until the backends are gone, as after a server restart.
            wait_until(lambda: not cur.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = "
                                               "'pool-test'") and cur.fetchone() is None)
        admin.close()
        with database.transaction() as cur:
            cur.execute("SELECT 1 AS one")
            assert cur.fetchone()["one"] == 1
        assert database.ping()
    finally:
        database.close()
