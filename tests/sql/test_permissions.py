"""fleet_ingest — the broker's database role — may INSERT into the inboxes (the telemetry queue and the other
inboxes' views) and do nothing else."""
from __future__ import annotations

import psycopg2
import pytest

from tests.sql.conftest import envelope

INBOXES = ["telemetry_inbox", "status_inbox", "mission_inbox", "connection_inbox", "presence_inbox",
           "authz_denied_inbox", "vda5050_inbox"]

FORBIDDEN = [
    "SELECT * FROM ingest.telemetry_inbox",
    "SELECT * FROM ingest.settings",
    "UPDATE ingest.settings SET max_payload_bytes = 1048576",
    "SELECT * FROM telemetry",
    "SELECT * FROM vehicles",
    "SELECT * FROM rejected_messages",
    "SELECT * FROM vehicle_state",
    "INSERT INTO telemetry (vehicle_id, ts, received_at, msg_id, lat, lon) VALUES ('veh-1', now(), now(), 'x', 0, 0)",
    "INSERT INTO rejected_messages (received_at, reason) VALUES (now(), 'forged')",
    "UPDATE vehicles SET status = 'active'",
    "DELETE FROM missions",
    "TRUNCATE telemetry",
    "DROP TABLE ingest.telemetry_inbox",
    "DROP VIEW ingest.status_inbox",
    "DELETE FROM ingest.telemetry_inbox",
    "UPDATE ingest.telemetry_inbox SET topic = 'fleet/v1/veh-2/telemetry'",
    "TRUNCATE ingest.telemetry_inbox",
    "INSERT INTO ingest.telemetry_inbox (id, clientid, topic, payload_b64, received_at_ms) "
    "OVERRIDING SYSTEM VALUE VALUES (1, 'veh-1', 'fleet/v1/veh-1/telemetry', '', 0)",
    "SELECT * FROM ingest.drain_telemetry()",
    "SELECT ingest.apply_telemetry_row('veh-1', 'fleet/v1/veh-1/telemetry', '', 0)",
    "ALTER TABLE telemetry ADD COLUMN x int",
    "CREATE TABLE public.sneaky (id int)",
    "CREATE TABLE ingest.sneaky (id int)",
    "SELECT fleet_maintenance()",
    "SELECT * FROM mission_apply_event(gen_random_uuid(), 'completed', 'vehicle', 'veh-1', NULL, NULL, NULL)",
    "SELECT ingest.reject('veh-1', 't', now(), 'forged', NULL, NULL, 0)",
    "SELECT ingest.current_settings()",
    "SELECT * FROM ingest_metrics()",
    "SELECT * FROM ingest.parked",
    "DELETE FROM ingest.parked",
    "SELECT * FROM ingest.retry_parked()",
    "SELECT ingest.park('telemetry', 'veh-1', '{}', 'forged')",
]


@pytest.mark.parametrize("statement", FORBIDDEN)
def test_fleet_ingest_cannot(ingest_conn, vehicles, statement):
    with ingest_conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
        cur.execute(statement)


def test_fleet_ingest_is_who_the_inbox_sees_and_the_triggers_run_as_the_owner(ingest_conn, inbox, vehicles, q):
    with ingest_conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone()[0] == "fleet_ingest"
    inbox.telemetry(envelope())
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 1


def test_the_grants_are_exactly_insert_on_the_inboxes(q):
    rows = q("SELECT table_schema, table_name, privilege_type FROM information_schema.role_table_grants "
             "WHERE grantee = 'fleet_ingest' ORDER BY table_name")
    assert [(r["table_schema"], r["table_name"], r["privilege_type"]) for r in rows] == \
        [("ingest", name, "INSERT") for name in sorted(INBOXES) if name != "telemetry_inbox"]
    # the telemetry queue: the broker's four columns, not the id that orders the queue
    rows = q("SELECT table_name, column_name, privilege_type FROM information_schema.column_privileges "
             "WHERE grantee = 'fleet_ingest' AND table_name = 'telemetry_inbox' ORDER BY column_name")
    assert [(r["table_name"], r["column_name"], r["privilege_type"]) for r in rows] == \
        [("telemetry_inbox", c, "INSERT") for c in ("clientid", "payload_b64", "received_at_ms", "topic")]


def test_no_function_of_the_ingest_mission_or_maintenance_code_is_callable_by_public(q):
    # each code file revokes what it creates; a function it forgets would keep PostgreSQL's default EXECUTE for PUBLIC
    rows = q("SELECT p.oid::regprocedure::text AS function "
             "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
             "WHERE (n.nspname = 'ingest' "
             "OR p.proname IN ('fleet_maintenance', 'ingest_metrics', 'mission_apply_event')) "
             "AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0))")
    assert rows == []
    assert q("SELECT count(*) AS n FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
             "WHERE n.nspname = 'ingest'")[0]["n"] > 20


def test_the_inbox_triggers_are_security_definer_with_a_pinned_search_path(q):
    rows = q("SELECT p.proname, p.prosecdef, p.proconfig FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
             "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
             "WHERE n.nspname = 'ingest' AND NOT t.tgisinternal")
    assert len(rows) == len(INBOXES) - 1       # the telemetry queue has no trigger: the worker drains it
    rows += q("SELECT p.proname, p.prosecdef, p.proconfig FROM pg_proc p "
              "WHERE p.oid IN ('ingest.drain_telemetry(integer)'::regprocedure, "
              "'ingest.apply_telemetry_row(text, text, text, bigint)'::regprocedure)")
    assert len(rows) == len(INBOXES) + 1
    for row in rows:
        # the broker's batch must not wait behind someone else's lock: a short lock_timeout, reset on return
        assert row["prosecdef"] and row["proconfig"] == ["search_path=pg_catalog, pg_temp",
                                                         "lock_timeout=100ms"], row


def test_a_lock_the_ingest_cannot_get_parks_the_message_instead_of_failing_the_batch(db_url, inbox, vehicles, q):
    # EMQX drops a whole batch on any error (docs/EMQX.md §5.6a): the INSERT succeeds, the message waits in
    # ingest.parked, and it is neither lost nor dead-lettered. (Telemetry: the drain meets the lock, not the broker.)
    holder = psycopg2.connect(db_url)
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE vehicle_state IN ACCESS EXCLUSIVE MODE")
    try:
        inbox.telemetry(envelope())
    finally:
        holder.close()
    [parked] = q("SELECT inbox, clientid, last_error FROM ingest.parked")
    assert (parked["inbox"], parked["clientid"]) == ("telemetry", "veh-1")
    assert parked["last_error"].startswith("55P03"), "lock_not_available"
    assert q("SELECT count(*) AS n FROM rejected_messages")[0]["n"] == 0
    assert q("SELECT * FROM ingest.retry_parked()")[0]["applied"] == 1
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 1
    assert q("SELECT count(*) AS n FROM ingest.parked")[0]["n"] == 0
