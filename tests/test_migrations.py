"""The migration runner: applies in order, once, each in a transaction, and refuses edited history."""
from __future__ import annotations

import psycopg2
import pytest

from fleetcore import db, migrations


def _schema_rows(url):
    conn = db.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        rows = cur.fetchall()
    conn.close()
    return rows


def test_fresh_database_gets_every_migration_once(empty_db_url):
    conn = db.connect(empty_db_url)
    applied = migrations.migrate(conn)
    conn.close()
    on_disk = migrations.discover()
    assert [m.version for m in applied] == [m.version for m in on_disk]
    assert [(v, n, c) for v, n, c in _schema_rows(empty_db_url)] == [(m.version, m.name, m.checksum) for m in on_disk]


def test_running_again_is_a_no_op(empty_db_url):
    conn = db.connect(empty_db_url)
    migrations.migrate(conn)
    before = _schema_rows(empty_db_url)
    assert migrations.migrate(conn) == []
    conn.close()
    assert _schema_rows(empty_db_url) == before


def test_an_edited_applied_migration_is_refused(empty_db_url, sql_dir_copy):
    conn = db.connect(empty_db_url)
    migrations.migrate(conn, sql_dir_copy)
    first = sorted(sql_dir_copy.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(migrations.MigrationError, match=rf"{first.name} was edited after it was applied"):
        migrations.migrate(conn, sql_dir_copy)
    conn.close()


def test_a_removed_applied_migration_is_refused(empty_db_url, sql_dir_copy):
    conn = db.connect(empty_db_url)
    migrations.migrate(conn, sql_dir_copy)
    first = sorted(sql_dir_copy.glob("*.sql"))[0]
    first.unlink()
    with pytest.raises(migrations.MigrationError, match="missing"):
        migrations.migrate(conn, sql_dir_copy)
    conn.close()


def test_a_failing_migration_is_rolled_back_and_later_ones_wait(empty_db_url, sql_dir_copy):
    (sql_dir_copy / "900_creates_then_fails.sql").write_text(
        "CREATE TABLE should_not_exist (id int);\nSELECT 1/0;\n")
    (sql_dir_copy / "901_after.sql").write_text("CREATE TABLE after_the_failure (id int);\n")
    conn = db.connect(empty_db_url)
    with pytest.raises(migrations.MigrationError, match=r"900_creates_then_fails\.sql failed and was rolled back"):
        migrations.migrate(conn, sql_dir_copy)
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('should_not_exist'), to_regclass('after_the_failure')")
        assert cur.fetchone() == (None, None)
        cur.execute("SELECT max(version) FROM schema_migrations")
        assert cur.fetchone()[0] < 900
    conn.close()


def test_new_migrations_are_applied_after_the_existing_ones(empty_db_url, sql_dir_copy):
    conn = db.connect(empty_db_url)
    migrations.migrate(conn, sql_dir_copy)
    (sql_dir_copy / "950_add_a_table.sql").write_text("CREATE TABLE added_later (id int);\n")
    assert [m.version for m in migrations.migrate(conn, sql_dir_copy)] == [950]
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('added_later') IS NOT NULL")
        assert cur.fetchone()[0]
    conn.close()


def test_badly_named_and_duplicate_files_are_reported(tmp_path):
    (tmp_path / "1_x.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError, match=r"NNN_lowercase_name\.sql"):
        migrations.discover(tmp_path)
    (tmp_path / "1_x.sql").unlink()
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "001_b.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError, match="share version 1"):
        migrations.discover(tmp_path)


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
