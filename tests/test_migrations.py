"""The migration runner: numbered migrations apply in order, once, each in a transaction, and edited history is
refused; code files (sql/code/) are applied after them and again whenever one changes; a database upgraded from
the layout before the code split ends up identical to a new one."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest

from fleetcore import db, migrations, paths
from fleetctl.postgres import bin_dir
from tests.conftest import empty_database
from tests.sql.conftest import ingest_url_for

FROZEN_PRE_SPLIT = Path(__file__).parent / "sql" / "vendor" / "pre_split"


# The checksums databases of the old layout recorded for these files. The frozen copies differ from those texts
# only in header comments (they cited notes outside this repository; tests/sql/vendor/pre_split/README.md), so a
# database built from the copies is given these checksums to be exactly one of the old layout.
APPLIED_CHECKSUMS = {
    "001_core.sql": "ed3990f5e458b48221f845e194303a9ab5c62e12052ed5b7cb849bb2b5b0f9fc",
    "002_ingest.sql": "9f6954e21876b85ce9650248c83d910a35cc64a36198a249753783d44afe7146",
    "003_mission_transitions.sql": "549342f52672d4922a75ba58b6968965ec9ae98edd48f9d7adc8603fa0f0f7a0",
    "010_registration.sql": "4dd7bd943ecea1e3a6e49b0e539736f9a667e2300fcb0bf5d65c950d315ac8c5",
}
# 002_ingest.sql's first text, before the mission-event reason fix (databases created then recorded this)
FIRST_INGEST_CHECKSUM = "88a1f1809c1eea3b6700cdaa5cb1ec0aa105563d3781593fa45b4604a4ffa289"


@pytest.fixture(scope="module")
def pre_split(tmp_path_factory) -> Path:
    """sql/ as databases applied it before the code split, under its migration file names. The frozen texts are
    stored as ``*.sql.frozen`` so that nothing takes them for the project's SQL."""
    target = tmp_path_factory.mktemp("pre_split")
    for frozen in FROZEN_PRE_SPLIT.glob("*.sql.frozen"):
        (target / frozen.name.removesuffix(".frozen")).write_bytes(frozen.read_bytes())
    return target


def _applied_checksum(migration: migrations.Migration) -> str:
    """What a database of the old layout recorded for this pre-split file."""
    return APPLIED_CHECKSUMS.get(migration.filename, migration.checksum)
REWRITTEN = {1, 2, 3, 4, 10}  # the migrations that moved their functions out, or only had comments fixed


def _schema_rows(url):
    conn = db.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        rows = cur.fetchall()
    conn.close()
    return rows


def _code_rows(url):
    conn = db.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT filename, checksum, applied_at FROM schema_code ORDER BY filename")
        rows = cur.fetchall()
    conn.close()
    return rows


def _query(url, sql, params=()):
    conn = db.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall() if cur.description else None
        conn.commit()
        return rows
    finally:
        conn.close()


def _migrate(url, directory=None, **kw):
    conn = db.connect(url)
    try:
        return migrations.migrate(conn, directory, **kw)
    finally:
        conn.close()


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _reject_reason_of_an_acl_denial(url) -> str:
    _query(url, "INSERT INTO ingest.authz_denied_inbox (clientid, topic, action, at_ms) "
                "VALUES ('veh-x', 'fleet/v1/veh-y/telemetry', 'publish', 1764000000000)")
    return _query(url, "SELECT reason FROM rejected_messages ORDER BY id DESC LIMIT 1")[0][0]


# -- numbered migrations -------------------------------------------------------------------------------------------

def test_fresh_database_gets_every_migration_and_code_file_once(empty_db_url):
    outcome = _migrate(empty_db_url)
    on_disk = migrations.discover()
    code = migrations.discover_code()
    assert [m.version for m in outcome.applied] == [m.version for m in on_disk]
    assert outcome.rewrites == []
    assert [c.filename for c in outcome.code] == [c.filename for c in code]
    assert outcome.code_changes == {c.filename: "new" for c in code}
    assert _schema_rows(empty_db_url) == [(m.version, m.name, m.checksum) for m in on_disk]
    assert [(f, c) for f, c, _ in _code_rows(empty_db_url)] == sorted((c.filename, c.checksum) for c in code)


def test_running_again_is_a_no_op(empty_db_url):
    _migrate(empty_db_url)
    before = (_schema_rows(empty_db_url), _code_rows(empty_db_url))
    outcome = _migrate(empty_db_url)
    assert (outcome.applied, outcome.rewrites, outcome.code, outcome.code_changes) == ([], [], [], {})
    assert (_schema_rows(empty_db_url), _code_rows(empty_db_url)) == before


def test_an_edited_applied_migration_is_refused(empty_db_url, sql_dir_copy):
    _migrate(empty_db_url, sql_dir_copy)
    first = sorted(sql_dir_copy.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(migrations.MigrationError, match=rf"{first.name} was edited after it was applied"):
        _migrate(empty_db_url, sql_dir_copy)


def test_an_edit_naming_some_other_text_it_supersedes_is_still_refused(empty_db_url, sql_dir_copy):
    _migrate(empty_db_url, sql_dir_copy)
    path = sql_dir_copy / "021_mission_dispatch.sql"
    path.write_text(path.read_text() + f"-- supersedes sha256: {'0' * 64}\nCREATE TABLE sneaked_in (id int);\n")
    with pytest.raises(migrations.MigrationError, match=r"021_mission_dispatch\.sql was edited after it was applied"):
        _migrate(empty_db_url, sql_dir_copy)
    assert _query(empty_db_url, "SELECT to_regclass('sneaked_in')") == [(None,)]


def test_a_rewrite_that_names_the_applied_text_is_accepted_and_recorded(empty_db_url, sql_dir_copy):
    _migrate(empty_db_url, sql_dir_copy)
    path = sql_dir_copy / "021_mission_dispatch.sql"
    applied = migrations.checksum_of(path.read_text())
    path.write_text(path.read_text().replace("-- 021_mission_dispatch.sql —", "-- 021_mission_dispatch.sql, reworded —")
                    + f"-- supersedes sha256: {applied}\n")
    messages = []
    outcome = _migrate(empty_db_url, sql_dir_copy, log=messages.append)
    assert [m.version for m in outcome.rewrites] == [21] and outcome.applied == []
    assert [c.filename for c in outcome.code] == [c.filename for c in migrations.discover_code(sql_dir_copy)]
    assert {v: c for v, _, c in _schema_rows(empty_db_url)}[21] == migrations.checksum_of(path.read_text())
    assert any("021_mission_dispatch.sql" in m and "supersedes" in m for m in messages), messages
    assert _migrate(empty_db_url, sql_dir_copy).rewrites == []


def test_a_removed_applied_migration_is_refused(empty_db_url, sql_dir_copy):
    _migrate(empty_db_url, sql_dir_copy)
    first = sorted(sql_dir_copy.glob("*.sql"))[0]
    first.unlink()
    with pytest.raises(migrations.MigrationError, match="missing"):
        _migrate(empty_db_url, sql_dir_copy)


def test_a_failing_migration_is_rolled_back_and_later_ones_wait(empty_db_url, sql_dir_copy):
    (sql_dir_copy / "900_creates_then_fails.sql").write_text(
        "CREATE TABLE should_not_exist (id int);\nSELECT 1/0;\n")
    (sql_dir_copy / "901_after.sql").write_text("CREATE TABLE after_the_failure (id int);\n")
    with pytest.raises(migrations.MigrationError, match=r"900_creates_then_fails\.sql failed and was rolled back"):
        _migrate(empty_db_url, sql_dir_copy)
    assert _query(empty_db_url, "SELECT to_regclass('should_not_exist'), to_regclass('after_the_failure')") == \
        [(None, None)]
    assert _query(empty_db_url, "SELECT max(version) FROM schema_migrations")[0][0] < 900


def test_new_migrations_are_applied_after_the_existing_ones_and_the_code_again(empty_db_url, sql_dir_copy):
    _migrate(empty_db_url, sql_dir_copy)
    (sql_dir_copy / "950_add_a_table.sql").write_text("CREATE TABLE added_later (id int);\n")
    outcome = _migrate(empty_db_url, sql_dir_copy)
    assert [m.version for m in outcome.applied] == [950]
    assert len(outcome.code) == len(migrations.discover_code(sql_dir_copy))
    assert _query(empty_db_url, "SELECT to_regclass('added_later') IS NOT NULL") == [(True,)]


def test_a_migration_may_drop_what_the_code_files_create_again(empty_db_url, sql_dir_copy):
    # the way to change what CREATE OR REPLACE cannot (here: a view is dropped and must come back)
    _migrate(empty_db_url, sql_dir_copy)
    (sql_dir_copy / "950_drop_an_inbox.sql").write_text("DROP VIEW ingest.authz_denied_inbox;\n")
    _migrate(empty_db_url, sql_dir_copy)
    assert _reject_reason_of_an_acl_denial(empty_db_url) == "acl_denied"


def test_badly_named_and_duplicate_files_are_reported(tmp_path):
    (tmp_path / "1_x.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError, match=r"NNN_lowercase_name\.sql"):
        migrations.discover(tmp_path)
    (tmp_path / "1_x.sql").unlink()
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "001_b.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError, match="share version 1"):
        migrations.discover(tmp_path)
    code = tmp_path / migrations.CODE_DIRECTORY
    code.mkdir()
    (code / "telemetry.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError, match=r"NN_lowercase_topic\.sql"):
        migrations.discover_code(tmp_path)
    (code / "telemetry.sql").unlink()
    (code / "20_telemetry.sql").write_text("SELECT 1;")
    (code / "20_status.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError, match="share position 20"):
        migrations.discover_code(tmp_path)


def test_the_schema_has_the_core_entities(conn):
    expected = {"fleets", "users", "user_fleets", "vehicles", "enrollment_tokens", "device_credentials",
                "telemetry", "vehicle_state", "vehicle_status", "missions", "mission_events", "mission_states",
                "mission_transitions", "rejected_messages", "audit_log"}
    with conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "UNION SELECT relname FROM pg_class WHERE relkind = 'p'")
        present = {row[0] for row in cur.fetchall()}
    assert expected <= present


def test_a_line_ending_change_is_not_an_edit():
    assert migrations.checksum_of("a\r\nb\r\n") == migrations.checksum_of("a\nb\n")


def test_the_app_role_cannot_bypass_the_checks(conn):
    with conn.cursor() as cur, pytest.raises(psycopg2.errors.CheckViolation):
        cur.execute("INSERT INTO fleets (id, name) VALUES ('Bad/Id', 'x')")


# -- code files ----------------------------------------------------------------------------------------------------

def test_an_edited_code_file_is_applied_again_without_a_migration(empty_db_url, sql_dir_copy):
    _migrate(empty_db_url, sql_dir_copy)
    assert _reject_reason_of_an_acl_denial(empty_db_url) == "acl_denied"
    recorded = {f: c for f, c, _ in _code_rows(empty_db_url)}
    edited = sql_dir_copy / "code" / "24_authz_denied.sql"
    _edit(edited, "'acl_denied'", "'acl_denied_edited'")
    messages = []
    outcome = _migrate(empty_db_url, sql_dir_copy, log=messages.append)
    assert outcome.applied == [] and outcome.code_changes == {"24_authz_denied.sql": "changed"}
    assert [c.filename for c in outcome.code] == sorted(recorded)  # the whole set, in order
    assert _reject_reason_of_an_acl_denial(empty_db_url) == "acl_denied_edited"
    now_recorded = {f: c for f, c, _ in _code_rows(empty_db_url)}
    assert now_recorded == {**recorded, "24_authz_denied.sql": migrations.checksum_of(edited.read_text())}
    assert any("24_authz_denied.sql changed" in m for m in messages), messages


def test_a_failing_code_file_changes_nothing_and_is_retried_next_time(empty_db_url, sql_dir_copy):
    _migrate(empty_db_url, sql_dir_copy)
    before = _code_rows(empty_db_url)
    _edit(sql_dir_copy / "code" / "10_ingest_common.sql", "RETURN decode(p_b64, 'base64');",
          "RETURN decode(p_b64, 'base64');  -- edited")
    _edit(sql_dir_copy / "code" / "24_authz_denied.sql", "'acl_denied'", "'acl_denied_edited'")
    broken = sql_dir_copy / "code" / "30_mission_transitions.sql"
    original = broken.read_text()
    broken.write_text(original + "\nSELECT no_such_function();\n")
    with pytest.raises(migrations.MigrationError, match=r"code file code/30_mission_transitions\.sql failed; no code "
                                                         "file was applied"):
        _migrate(empty_db_url, sql_dir_copy)
    assert _code_rows(empty_db_url) == before
    assert _reject_reason_of_an_acl_denial(empty_db_url) == "acl_denied", "the earlier files were rolled back too"
    broken.write_text(original)
    assert set(_migrate(empty_db_url, sql_dir_copy).code_changes) == {"10_ingest_common.sql", "24_authz_denied.sql"}
    assert _reject_reason_of_an_acl_denial(empty_db_url) == "acl_denied_edited"


def test_a_failed_code_step_after_a_migration_is_completed_by_the_next_run(empty_db_url, sql_dir_copy):
    _migrate(empty_db_url, sql_dir_copy)
    (sql_dir_copy / "950_drop_an_inbox.sql").write_text("DROP VIEW ingest.authz_denied_inbox;\n")
    broken = sql_dir_copy / "code" / "50_vehicle_authn.sql"
    original = broken.read_text()
    broken.write_text(original + "\nSELECT no_such_function();\n")
    with pytest.raises(migrations.MigrationError, match=r"50_vehicle_authn\.sql failed"):
        _migrate(empty_db_url, sql_dir_copy)
    broken.write_text(original)  # back to the text the database recorded before: only the migration is new
    outcome = _migrate(empty_db_url, sql_dir_copy)
    assert outcome.applied == [] and len(outcome.code) == len(migrations.discover_code(sql_dir_copy))
    assert _reject_reason_of_an_acl_denial(empty_db_url) == "acl_denied"


def test_applying_the_code_again_keeps_grants_and_revokes_exactly(empty_db_url, pg_admin_url):
    _migrate(empty_db_url)
    before = _schema_dump(pg_admin_url, empty_db_url)
    _query(empty_db_url, "DELETE FROM schema_code")  # the documented way to force a full re-apply
    assert len(_migrate(empty_db_url).code) == len(migrations.discover_code())
    after = _schema_dump(pg_admin_url, empty_db_url)
    assert after == before
    assert "GRANT INSERT ON TABLE ingest.status_inbox TO fleet_ingest;" in after
    assert "GRANT INSERT(clientid) ON TABLE ingest.telemetry_inbox TO fleet_ingest;" in after
    assert "REVOKE ALL ON FUNCTION public.mission_apply_event" in after


def test_applying_the_code_while_the_broker_writes_fails_no_insert(db_url, stack):
    # Status reports with a new configuration UPDATE vehicles, whose trigger the code step re-creates. The code step
    # locks every inbox view before any table (60_vehicle_state.sql comes after the inboxes), so the two never wait
    # for each other in a cycle; a deadlock would fail the INSERT, and EMQX drops a failed batch.
    _query(db_url, "INSERT INTO fleets (id, name) VALUES ('f', 'F'); "
                   "INSERT INTO vehicles (id, fleet_id, status) VALUES ('veh-1', 'f', 'active')")
    ingest = psycopg2.connect(ingest_url_for(stack, db_url))
    ingest.autocommit = True
    stop = threading.Event()
    sent, failures = [], []

    def publish() -> None:
        with ingest.cursor() as cur:
            while not stop.is_set():
                seq = len(sent) + 1
                envelope = {"v": 1, "msg_id": str(uuid.uuid4()), "seq": seq, "ts": _now_ms(),
                            "data": {"mode": "AUTO", "config_version": seq, "config": {"n": seq}}}
                try:
                    cur.execute("INSERT INTO ingest.status_inbox (clientid, topic, payload_b64, received_at_ms) "
                                "VALUES ('veh-1', 'fleet/v1/veh-1/status', %s, %s)",
                                (base64.b64encode(json.dumps(envelope).encode()).decode(), _now_ms()))
                    sent.append(seq)
                except psycopg2.Error as exc:
                    failures.append(exc)
    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        for _ in range(10):
            _query(db_url, "DELETE FROM schema_code")
            assert len(_migrate(db_url).code) == len(migrations.discover_code())
    finally:
        stop.set()
        publisher.join(timeout=30)
        ingest.close()
    assert failures == []
    assert len(sent) > 10, "the publisher ran alongside the code step"
    assert _query(db_url, "SELECT count(*), max(reported_config_version) FROM vehicle_status, vehicles "
                          "WHERE vehicles.id = 'veh-1'")[0] == (len(sent), len(sent))


def test_a_removed_code_file_is_reported_and_forgotten(empty_db_url, sql_dir_copy):
    _migrate(empty_db_url, sql_dir_copy)
    (sql_dir_copy / "code" / "50_vehicle_authn.sql").unlink()
    conn = db.connect(empty_db_url)
    try:
        assert ("code/50_vehicle_authn.sql", "removed (its objects stay until a migration drops them)") in \
            migrations.status(conn, sql_dir_copy)
    finally:
        conn.close()
    assert _migrate(empty_db_url, sql_dir_copy).code_changes == {"50_vehicle_authn.sql": "removed"}
    assert "50_vehicle_authn.sql" not in [f for f, _, _ in _code_rows(empty_db_url)]


def test_fleetctl_db_status_and_migrate_report_code_files(empty_db_url, sql_dir_copy):
    env = {**os.environ, "DATABASE_URL": empty_db_url, "FLEET_SQL_DIR": str(sql_dir_copy)}

    def fleetctl(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "fleetctl", "db", *args], env=env, capture_output=True,
                              text=True, timeout=120, cwd=paths.PROJECT_ROOT)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    status = fleetctl("status")
    assert "001_core.sql" in status and "pending" in status and "code/23_connection.sql" in status
    out = fleetctl("migrate")
    code_count = len(migrations.discover_code(sql_dir_copy))
    assert f"{len(migrations.discover(sql_dir_copy))} migration(s) applied, {code_count} code file(s) applied" in out
    _edit(sql_dir_copy / "code" / "21_status.sql", "-- 21_status.sql —", "-- 21_status.sql (edited) —")
    status_lines = {line.split()[0]: line.split(None, 1)[1] for line in fleetctl("status").splitlines()}
    assert status_lines["code/21_status.sql"] == "pending (changed)"
    assert status_lines["code/20_telemetry.sql"] == "applied"
    assert status_lines["021_mission_dispatch.sql"] == "applied"
    out = fleetctl("migrate")
    assert "21_status.sql changed" in out and f"0 migration(s) applied, {code_count} code file(s) applied" in out
    assert "0 migration(s) applied, code files unchanged" in fleetctl("migrate")


# -- the upgrade from the layout before the code split -------------------------------------------------------------

def _schema_dump(pg_admin_url: str, url: str) -> str:
    """pg_dump --schema-only of the database ``url`` names, without its daily telemetry partitions (their days
    depend on the date) and without the per-run random key of psql's \\restrict lines."""
    target = pg_admin_url.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1]
    done = subprocess.run([str(bin_dir() / "pg_dump"), "--schema-only", "--exclude-table=public.telemetry_p*",
                           "--dbname", target], capture_output=True, text=True, timeout=120, check=True)
    return "\n".join(line for line in done.stdout.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def _partitions(url: str) -> list[str]:
    return [row[0] for row in _query(url, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                          "WHERE i.inhparent = 'public.telemetry'::regclass ORDER BY 1")]


def test_every_rewritten_migration_supersedes_the_text_databases_applied(pre_split):
    current = {m.filename: m for m in migrations.discover()}
    for old in migrations.discover(pre_split):
        new = current[old.filename]
        applied = _applied_checksum(old)
        if old.version in REWRITTEN:
            assert new.checksum != applied and applied in new.supersedes, old.filename
        else:
            assert new.checksum == applied and not new.supersedes, old.filename


def test_the_first_text_of_the_ingest_migration_is_superseded_too(pre_split):
    # before the mission-event reason fix, 002 mapped mission_apply_event's errors in one line; the frozen copy has
    # the fix, and databases created before it recorded FIRST_INGEST_CHECKSUM
    fixed = ("            -- mission_apply_event's own codes, in this file's vocabulary "
             "(checked above; kept for races)\n"
             "            problem := CASE result.error WHEN 'not_found' THEN 'unknown_mission'\n"
             "                                         WHEN 'not_assigned' THEN 'mission_not_assigned'\n"
             "                                         ELSE 'invalid_transition' END;\n")
    assert fixed in (pre_split / "002_ingest.sql").read_text(encoding="utf-8")
    ingest = next(m for m in migrations.discover() if m.version == 2)
    assert ingest.supersedes == {FIRST_INGEST_CHECKSUM, APPLIED_CHECKSUMS["002_ingest.sql"]}


def test_a_database_of_the_old_layout_upgrades_to_exactly_a_new_one(empty_db_url, stack, pg_admin_url, pre_split):
    day = datetime.now(UTC).date()
    old = _migrate(empty_db_url, pre_split)
    assert [m.version for m in old.applied] == [m.version for m in migrations.discover(pre_split)]
    assert old.code == []
    for filename, checksum in APPLIED_CHECKSUMS.items():   # what a database of the old layout recorded
        _query(empty_db_url, "UPDATE schema_migrations SET checksum = %s WHERE version = %s",
               (checksum, int(filename[:3])))
    _query(empty_db_url, "INSERT INTO fleets (id, name) VALUES ('f', 'F'); "
                         "INSERT INTO vehicles (id, fleet_id, status) VALUES ('veh-old', 'f', 'active')")

    messages = []
    upgrade = _migrate(empty_db_url, log=messages.append)
    before_split = {m.version for m in migrations.discover(pre_split)}
    assert [m.version for m in upgrade.applied] == [m.version for m in migrations.discover()
                                                    if m.version not in before_split]   # the ones added since
    assert {m.version for m in upgrade.rewrites} == REWRITTEN
    assert sum("supersedes" in m for m in messages) == len(REWRITTEN), messages
    assert len(upgrade.code) == len(migrations.discover_code())

    with empty_database(stack, pg_admin_url) as fresh_url:
        _migrate(fresh_url)
        assert _schema_dump(pg_admin_url, empty_db_url) == _schema_dump(pg_admin_url, fresh_url)
        assert _schema_rows(empty_db_url) == _schema_rows(fresh_url)
        assert [r[:2] for r in _code_rows(empty_db_url)] == [r[:2] for r in _code_rows(fresh_url)]
        if datetime.now(UTC).date() == day:  # the partitions made are those of the day it runs
            assert _partitions(empty_db_url) == _partitions(fresh_url)

    # and the upgraded database works: the vehicle that existed before is ingested through the new code
    _query(empty_db_url, "INSERT INTO ingest.telemetry_inbox (clientid, topic, payload_b64, received_at_ms) "
                         "VALUES ('veh-old', 'fleet/v1/veh-old/telemetry', %s, %s)",
           (_telemetry_b64(), _now_ms()))
    assert _query(empty_db_url, "SELECT taken, in_sets FROM ingest.drain_telemetry()") == [(1, 1)]   # the worker
    assert _query(empty_db_url, "SELECT count(*) FROM telemetry WHERE vehicle_id = 'veh-old'") == [(1,)]
    assert _migrate(empty_db_url).rewrites == []


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def _telemetry_b64() -> str:
    envelope = {"v": 1, "msg_id": str(uuid.uuid4()), "seq": 1, "ts": _now_ms(), "data": {"lat": 48.1, "lon": 11.5}}
    return base64.b64encode(json.dumps(envelope).encode()).decode()
