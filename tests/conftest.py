"""Shared fixtures: one real embedded stack per test session, and a fresh database per test that needs one.

* ``stack`` — started once through the same launcher as ``make run`` (``fleetctl.stack.Stack``) with its own
  state directory and free ports, so it never collides with a developer's running stack.
* ``db_url`` — a brand-new database cloned from a migrated template (fast), dropped after the test.
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import psycopg2
import pytest

from api import passwords
from fleetcore import db, migrations, paths
from fleetctl import dbadmin
from fleetctl.ports import free_port
from fleetctl.stack import Ports, Stack, StackConfig
from tests.support.delivery import RuleActions
from tests.support.fleet_fixtures import (  # noqa: F401 - fixtures for every package
    admin,
    admin_password,
    anonymous,
    api_url,
    enroll,
    fleet,
    make_user,
    operator,
)
from tests.support.required import in_ci
from tests.support.vehicle import wait_for_actions_on

TEMPLATE_DB = "fleet_template"
_counter = itertools.count(1)


def pytest_configure(config):
    """Every stack the tests start, and every command they run, hashes operator passwords at bcrypt's lowest cost
    (api/passwords.py): the suite logs in hundreds of times, at ~0.25 s of CPU each at production's cost, and
    guesses no password. The stacks inherit it from this environment (Stack.service_env); tests/api/
    test_password_hash_cost.py checks that it reaches them and that production keeps the default."""
    os.environ.setdefault(passwords.HASH_COST_VARIABLE, str(passwords.MIN_HASH_COST))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope`` (``make test``): a file, or a package with a package-scoped stack, per unit of work
    (tests/support/xdist.py)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from tests.support.xdist import StackScopeScheduling
    return StackScopeScheduling(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skipped test is a failed one: whatever was missing (tests/support/required.py) must be
    installed in CI, never left untested."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run: {reason}"


def free_ports() -> Ports:
    return Ports(**{name: free_port() for name in Ports.__dataclass_fields__})


@pytest.fixture(scope="session")
def state_dirs(request) -> Iterator[Callable[[str], Path]]:
    """``state_dirs(name)``: a new directory for an embedded stack, outside pytest's temporary root. Every pytest
    run that starts on the machine resets that root to mode 0700, which would lock the embedded PostgreSQL (another
    user when the tests run as root) out of the data directory of a session still running. Removed after a
    session without failures; kept (with the stacks' logs) otherwise."""
    root = Path(tempfile.mkdtemp(prefix="fleet-tests-"))
    yield lambda name: Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    if request.session.testsfailed == 0:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(state_dirs):
    messages: list[str] = []
    state_dir = state_dirs("stack")
    config = StackConfig(state_dir=state_dir, ports=free_ports(), durable=False,
                         extra_env={"FLEET_LOG_LEVEL": os.environ.get("FLEET_TEST_LOG_LEVEL", "INFO"),
                                    "API_EVENTS_KEEPALIVE_S": "1", "API_EVENTS_RECHECK_S": "1",  # api/test_events.py
                                    "ALARM_EVALUATE_INTERVAL_S": "0.5", "WEBHOOK_BACKOFF_S": "0.2",  # test_alarms.py
                                    "WEBHOOK_TIMEOUT_S": "2", "WEBHOOK_MAX_ATTEMPTS": "5"})
    the_stack = Stack(config, out=messages.append)
    the_stack.start()
    the_stack.messages = messages
    track_rule_actions(the_stack)
    yield the_stack
    the_stack.stop("test session finished")


def track_rule_actions(stack: Stack) -> RuleActions:
    """Vehicles publishing to this stack's broker wait for its rule actions after a PUBACK (tests/support/
    delivery.py); ``stack.actions`` is that view of the broker for tests that wait on it themselves."""
    stack.actions = RuleActions.of_stack(stack)
    ports = stack.config.ports
    wait_for_actions_on((ports.mqtt, ports.mqtt_tls, ports.mqtt_ws), stack.actions.wait_processed)
    return stack.actions


@pytest.fixture(scope="session")
def pg_admin_url(stack) -> str:
    return stack.postgres.url()


@pytest.fixture(scope="session")
def template_db(stack, pg_admin_url) -> str:
    """A migrated database used as the template of every per-test database."""
    admin_conn = db.connect(pg_admin_url, autocommit=True)
    with admin_conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        cur.execute(f"CREATE DATABASE {TEMPLATE_DB} OWNER {dbadmin.APP_ROLE} TEMPLATE template0")
    admin_conn.close()
    url = app_url(stack, TEMPLATE_DB)
    conn = db.connect(url)
    migrations.migrate(conn)
    conn.close()
    return TEMPLATE_DB


def app_url(stack, database: str) -> str:
    return stack.postgres.url(dbadmin.APP_ROLE, stack.secrets["FLEET_DB_PASSWORD"], database)


@contextmanager
def cloned_database(stack, pg_admin_url: str, template_db: str, name: str) -> Iterator[str]:
    """A new database owned by the app role, a copy of ``template_db`` (its URL); dropped afterwards."""
    admin_conn = db.connect(pg_admin_url, autocommit=True)
    try:
        with admin_conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name} OWNER {dbadmin.APP_ROLE} TEMPLATE {template_db} STRATEGY FILE_COPY")
        yield app_url(stack, name)
        with admin_conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin_conn.close()


def empty_database(stack, pg_admin_url: str) -> AbstractContextManager[str]:
    """A new, empty database owned by the app role (for migration tests); dropped afterwards."""
    return cloned_database(stack, pg_admin_url, "template0", f"t_empty_{os.getpid()}_{next(_counter)}")


@pytest.fixture
def empty_db_url(stack, pg_admin_url):
    """A new, empty database owned by the app role (for migration tests)."""
    with empty_database(stack, pg_admin_url) as url:
        yield url


@pytest.fixture
def db_url(stack, pg_admin_url, template_db):
    """A new database with every migration applied, cloned from the template; dropped afterwards."""
    with cloned_database(stack, pg_admin_url, template_db, f"t_{os.getpid()}_{next(_counter)}") as url:
        yield url


@pytest.fixture
def conn(db_url):
    """An autocommit connection to the per-test database."""
    connection = psycopg2.connect(db_url)
    connection.autocommit = True
    yield connection
    connection.close()


@pytest.fixture
def sql_dir_copy(tmp_path: Path) -> Path:
    """A copy of sql/ (migrations and code files) that a test may edit."""
    target = tmp_path / "sql"
    (target / migrations.CODE_DIRECTORY).mkdir(parents=True)
    for sql_file in [*migrations.discover(), *migrations.discover_code()]:
        (target / sql_file.path.relative_to(paths.sql_dir())).write_text(sql_file.sql, encoding="utf-8")
    return target
