"""What EMQX 5.10.4 does between a PUBACK and the database, end to end through the stand-in (a subprocess reading an
emqx.conf), a real PostgreSQL and the /api/v5 metrics — the same things production shows:

* the PUBACK is sent on receipt, while the action may still be blocked (emqx_channel ``do_publish``);
* an error PostgreSQL reports drops the whole batch, counted ``failed``, never retried (emqx_postgresql
  ``handle_batch_result``);
* a database that cannot be reached is retried until it is back (recoverable: the batch waits in its buffer worker);
* a request older than ``request_ttl`` is dropped as ``dropped.expired``, and a full buffer worker drops its oldest
  request as ``dropped.queue_full`` (emqx_resource_buffer_worker).

Each test gets its own database (``db_url``); the broker reaches it directly or through a TCP proxy the test opens
and closes (a database that is down or a connection that is lost, without touching the shared server).
"""
from __future__ import annotations

import base64

import psycopg2
import pytest

from fleetctl.ports import free_port
from tests.broker.compat_support import BackgroundLoop, TcpProxy, db_parts
from tests.support.delivery import RuleActions
from tests.support.standin import API_KEY, API_SECRET, StandinBroker
from tests.support.waiting import wait_until

INBOX = "CREATE TABLE inbox (id bigserial PRIMARY KEY, clientid text, payload_b64 text)"
INSERT = "INSERT INTO inbox (clientid, payload_b64) VALUES (${clientid}, ${payload_b64})"


def broker_conf(db_url: str, *, server: str | None = None, sql: str = INSERT, resource_opts: str = "") -> str:
    p = db_parts(db_url)
    return f"""
connectors.pgsql.db {{
  server = "{server or f'{p["host"]}:{p["port"]}'}"
  database = "{p['database']}"
  username = "{p['user']}"
  password = "{p['password']}"
  pool_size = 2
  resource_opts {{ health_check_interval = "200ms" }}
}}
actions.pgsql.ingest {{
  connector = db
  parameters.sql = "{sql}"
  resource_opts {{ {resource_opts} }}
}}
rule_engine.rules.ingest {{
  sql = \"\"\"SELECT clientid, payload, base64_encode(payload) AS payload_b64 FROM "veh/#" \"\"\"
  actions = ["pgsql:ingest"]
}}
"""


@pytest.fixture
def inbox(conn):
    with conn.cursor() as cur:
        cur.execute(INBOX)
    return conn


@pytest.fixture
def run_broker(tmp_path):
    started: list[StandinBroker] = []

    def start(conf: str) -> tuple[StandinBroker, RuleActions]:
        broker = StandinBroker(tmp_path / f"broker-{len(started)}", extra_conf=conf).start()
        started.append(broker)
        return broker, RuleActions(broker.api_url, API_KEY, API_SECRET)
    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def database_proxy(db_url):
    """A TCP proxy to the test's database, closed at first (the database is "down"): ``proxy.port``,
    ``up()``, ``down()`` (closes the listener and every connection through it)."""
    loop = BackgroundLoop()
    p = db_parts(db_url)
    proxy = TcpProxy(p["host"], p["port"], free_port())
    proxy.up = lambda: loop.run(proxy.start())
    proxy.down = lambda: loop.run(proxy.stop())
    yield proxy
    proxy.down()
    loop.close()


def stored(conn) -> list[tuple[str, str]]:
    with conn.cursor() as cur:
        cur.execute("SELECT clientid, payload_b64 FROM inbox ORDER BY id")
        return [(clientid, base64.b64decode(b64).decode()) for clientid, b64 in cur.fetchall()]


def publish_acked(client, payload: str, timeout: float = 5.0) -> None:
    """QoS 1 publish that must be acknowledged within ``timeout`` s."""
    info = client.publish("veh/1/data", payload, qos=1, wait=False)
    info.wait_for_publish(timeout)
    assert info.is_published(), f"no PUBACK for {payload!r} within {timeout} s"


def test_puback_arrives_while_a_row_lock_blocks_the_action(run_broker, db_url, conn):
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE latest (id int PRIMARY KEY, v text)")
        cur.execute("INSERT INTO latest VALUES (1, 'before')")
    broker, actions = run_broker(broker_conf(db_url, sql="UPDATE latest SET v = ${payload} WHERE id = 1"))
    locker = psycopg2.connect(db_url)            # an operator's transaction holding the row
    try:
        with locker.cursor() as cur:
            cur.execute("SELECT v FROM latest WHERE id = 1 FOR UPDATE")
        client = broker.client("veh-1").connect()
        publish_acked(client, "after")
        assert wait_until(lambda: actions.metrics("pgsql:ingest")["inflight"] == 1)    # the UPDATE waits
        m = actions.metrics("pgsql:ingest")
        assert (m["matched"], m["success"], m["failed"]) == (1, 0, 0)
    finally:
        locker.rollback()
        locker.close()
    actions.wait_processed()
    with conn.cursor() as cur:
        cur.execute("SELECT v FROM latest WHERE id = 1")
        assert cur.fetchone() == ("after",)
    assert actions.metrics("pgsql:ingest")["success"] == 1
    client.disconnect()


def test_an_sql_error_drops_the_whole_batch_counted_failed_over_the_api_and_not_retried(run_broker, db_url, inbox):
    with inbox.cursor() as cur:
        cur.execute("ALTER TABLE inbox ADD CONSTRAINT no_poison CHECK (payload_b64 <> 'cG9pc29u')")    # "poison"
    broker, actions = run_broker(broker_conf(db_url, resource_opts='batch_size = 5, batch_time = "1h"'))
    client = broker.client("veh-1").connect()
    for payload in ("1", "2", "poison", "4", "5"):            # one batch of five, from one client
        publish_acked(client, payload)
    actions.wait_processed()
    m = actions.metrics("pgsql:ingest")
    assert (m["matched"], m["failed"], m["success"], m["retried"], m["dropped"]) == (5, 5, 0, 0, 0)
    rule = actions.rule_metrics("ingest")
    assert (rule["actions.total"], rule["actions.failed"], rule["actions.failed.unknown"]) == (5, 5, 5)
    publish_acked(client, "6")                            # the next batch is not a retry of the failed one
    publish_acked(client, "7")
    publish_acked(client, "8")
    publish_acked(client, "9")
    publish_acked(client, "10")
    actions.wait_processed()
    assert stored(inbox) == [("veh-1", str(n)) for n in range(6, 11)]
    assert actions.metrics("pgsql:ingest")["failed"] == 5
    client.disconnect()


def test_a_lost_database_connection_is_retried_and_the_message_lands_once_it_is_back(run_broker, db_url, inbox,
                                                                                     database_proxy):
    database_proxy.up()
    broker, actions = run_broker(broker_conf(db_url, server=f"127.0.0.1:{database_proxy.port}",
                                             resource_opts='request_ttl = "1m"'))
    client = broker.client("veh-1").connect()
    publish_acked(client, "before the outage")
    actions.wait_processed()
    database_proxy.down()                                  # every connection to the database is cut
    publish_acked(client, "during the outage")            # acknowledged on receipt, buffered
    wait_until(lambda: (m := actions.metrics("pgsql:ingest"))["queuing"] + m["inflight"] == 1)
    assert stored(inbox) == [("veh-1", "before the outage")]
    database_proxy.up()
    actions.wait_processed()
    assert stored(inbox) == [("veh-1", "before the outage"), ("veh-1", "during the outage")]
    m = actions.metrics("pgsql:ingest")
    assert (m["success"], m["failed"], m["dropped"], m["retried"]) == (2, 0, 0, 1)
    client.disconnect()


def test_a_request_older_than_request_ttl_is_dropped_as_expired(run_broker, db_url, inbox, database_proxy):
    broker, actions = run_broker(broker_conf(db_url, server=f"127.0.0.1:{database_proxy.port}",
                                             resource_opts='request_ttl = "1s"'))
    client = broker.client("veh-1").connect()
    publish_acked(client, "too late")                     # the database is down: acknowledged all the same
    wait_until(lambda: actions.metrics("pgsql:ingest")["dropped.expired"] == 1, timeout=15)
    m = actions.metrics("pgsql:ingest")
    assert (m["matched"], m["dropped"], m["success"], m["failed"]) == (1, 1, 0, 0)
    rule = actions.rule_metrics("ingest")
    assert (rule["actions.failed"], rule["actions.failed.unknown"]) == (1, 1)
    database_proxy.up()
    publish_acked(client, "in time")
    actions.wait_processed()
    assert stored(inbox) == [("veh-1", "in time")]
    client.disconnect()


def test_a_full_buffer_worker_drops_its_oldest_requests_as_queue_full(run_broker, db_url, inbox, database_proxy):
    # One buffer worker of 1 KB; a request here counts its values + 64 bytes ≈ 480, so the queue holds two while
    # the first request waits, in flight, for the database.
    broker, actions = run_broker(broker_conf(db_url, server=f"127.0.0.1:{database_proxy.port}", resource_opts=(
        'worker_pool_size = 1, max_buffer_bytes = "1KB", request_ttl = "1m"')))
    client = broker.client("veh-1").connect()
    payloads = [f"{n}:" + "x" * 300 for n in range(1, 6)]
    publish_acked(client, payloads[0])
    wait_until(lambda: actions.metrics("pgsql:ingest")["inflight"] == 1)
    for payload in payloads[1:]:
        publish_acked(client, payload)                    # every one acknowledged, though two will be dropped
    m = wait_until(lambda: (m := actions.metrics("pgsql:ingest"))["dropped.queue_full"] == 2 and m)
    assert (m["queuing"], m["inflight"], m["dropped"]) == (2, 1, 2)
    database_proxy.up()
    actions.wait_processed()
    assert [p.split(":")[0] for _c, p in stored(inbox)] == ["1", "4", "5"]     # 2 and 3 were the oldest queued
    m = actions.metrics("pgsql:ingest")
    assert (m["matched"], m["success"], m["dropped.queue_full"], m["failed"]) == (5, 3, 2, 0)
    client.disconnect()
