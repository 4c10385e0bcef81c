"""Rule engine → PostgreSQL with a real database: batching, typing, events, outages, and what EMQX does with errors.

``engine.on_publish`` waits for the actions' replies (the broker itself does not: it acknowledges on receipt), so
these tests can read the outcome of each message.

Each test gets a fresh database (``db_url``) and creates its own inbox table; the last test runs the production
emqx.conf against the real ingest views as fleet_ingest. Outages are simulated without touching the shared
server: the connector goes through a TCP proxy that the test closes and reopens, or its backends are terminated.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import time

import psycopg2
import pytest

from emqx.standin.clientinfo import ClientInfo, Message
from emqx.standin.config import load_config
from emqx.standin.rules import RuleDeliveryError, RuleEngine
from fleetcore import paths
from tests.broker.compat_support import TcpProxy, conf_from, db_parts, eventually, pg_connector_conf
from tests.conftest import free_port

_ids = itertools.count(1)

INBOX = """CREATE TABLE inbox (id bigserial PRIMARY KEY, clientid text, topic text, payload_b64 text,
                               received_at_ms bigint, tx bigint DEFAULT txid_current())"""
INSERT = ("INSERT INTO inbox (clientid, topic, payload_b64, received_at_ms) "
          "VALUES (${clientid}, ${topic}, ${payload_b64}, ${publish_received_at})")
SELECT = "SELECT clientid, topic, base64_encode(payload) AS payload_b64, publish_received_at"


def message(clientid: str, topic: str, payload: bytes, qos: int = 1) -> Message:
    return Message(id=f"{next(_ids):032X}", clientid=clientid, username=clientid, topic=topic, payload=payload,
                   qos=qos, retain=False, publish_received_at=int(time.time() * 1000), peerhost="127.0.0.1",
                   client_attrs={"role": "vehicle"})


def rules_conf(db_url: str, *, server: str | None = None,
               telemetry_opts: str = "batch_size = 100, batch_time = \"10ms\"",
               mission_opts: str = "batch_size = 1, inflight_window = 1", ttl: str = "5m") -> str:
    return pg_connector_conf(db_url, server=server, health="200ms") + f"""
actions.pgsql.telemetry {{ connector = db, parameters.sql = "{INSERT}"
  resource_opts {{ {telemetry_opts}, request_ttl = "{ttl}" }} }}
actions.pgsql.mission {{ connector = db, parameters.sql = "{INSERT}"
  resource_opts {{ {mission_opts}, request_ttl = "{ttl}" }} }}
rule_engine.rules.telemetry {{ sql = \"\"\"{SELECT} FROM "fleet/v1/+/telemetry" \"\"\", actions = ["pgsql:telemetry"] }}
rule_engine.rules.mission {{ sql = \"\"\"{SELECT} FROM "fleet/v1/+/mission", "fleet/v1/+/mission2" \"\"\",
                             actions = ["pgsql:mission"] }}
"""


def rows(conn, query: str = "SELECT clientid, topic, payload_b64, received_at_ms FROM inbox ORDER BY id"):
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()


@pytest.fixture
def inbox(conn):
    with conn.cursor() as cur:
        cur.execute(INBOX)
    return conn


def test_on_publish_replies_after_commit_with_emqx_values(tmp_path, db_url, inbox):
    cfg = conf_from(tmp_path, rules_conf(db_url))

    async def scenario():
        engine = RuleEngine(cfg)
        await engine.start()
        msg = message("veh-1", "fleet/v1/veh-1/telemetry", b'{"v":1}')
        await engine.on_publish(msg)
        committed = rows(inbox)                         # read right after on_publish returned: no waiting
        await engine.on_publish(message("veh-1", "fleet/v1/veh-1/other", b"x"))      # no rule
        await engine.on_publish(message("veh-1", "$SYS/brokers/x/telemetry", b"x"))  # ignore_sys_message
        metrics = engine.metrics()
        await engine.stop()
        return msg, committed, metrics

    msg, committed, metrics = asyncio.run(scenario())
    assert committed == [("veh-1", "fleet/v1/veh-1/telemetry", base64.b64encode(b'{"v":1}').decode(),
                          msg.publish_received_at)]
    assert len(rows(inbox)) == 1
    assert metrics["rules"]["telemetry"]["passed"] == 1
    assert metrics["actions"]["pgsql:telemetry"]["success"] == 1
    assert metrics["connectors"]["pgsql:db"] == "connected"


def test_batching_coalesces_concurrent_publishes(tmp_path, db_url, inbox):
    cfg = conf_from(tmp_path, rules_conf(db_url, telemetry_opts='batch_size = 100, batch_time = "200ms"'))

    async def scenario():
        engine = RuleEngine(cfg)
        await engine.start()
        msgs = [message(f"veh-{i % 7}", f"fleet/v1/veh-{i % 7}/telemetry", str(i).encode()) for i in range(250)]
        await asyncio.gather(*(engine.on_publish(m) for m in msgs))
        stored = len(rows(inbox))                       # every caller resolved only after its batch committed
        await engine.stop()
        return stored

    assert asyncio.run(scenario()) == 250
    per_tx = [n for (n,) in rows(inbox, "SELECT count(*) FROM inbox GROUP BY tx ORDER BY 1 DESC")]
    # PostgreSQL is an always_sync connector: each client maps to one buffer worker (lane) that runs one batch at
    # a time, so the 7 clients' 250 messages coalesce into at most one executemany per client, not 250 INSERTs.
    assert sum(per_tx) == 250 and len(per_tx) <= 7
    clients_per_tx = rows(inbox, "SELECT count(DISTINCT clientid) FROM inbox GROUP BY tx")
    assert len(clients_per_tx) == len(per_tx)


def test_parameters_are_typed_as_emqx_sends_them(tmp_path, db_url, conn):
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE typed (t text, i bigint, f double precision, b boolean, j jsonb, n text, q int)")
    sql = "INSERT INTO typed VALUES (${qos}, ${payload.i}, ${payload.f}, ${flags.retain}, ${doc}, ${nope}, ${q})"
    options = 'batch_size = 10, batch_time = "50ms"'
    cfg = conf_from(tmp_path, pg_connector_conf(db_url) + f"""
actions.pgsql.typed {{ connector = db, parameters.sql = "{sql}", resource_opts {{ {options} }} }}
rule_engine.rules.typed {{ sql = \"\"\"SELECT qos, payload, flags, json_encode(payload.o) AS doc, payload.q AS q
                           FROM "t/#" \"\"\", actions = ["pgsql:typed"] }}
""")

    async def scenario():
        engine = RuleEngine(cfg)
        await engine.start()
        good = message("c1", "t/1", b'{"i": 42, "f": 2, "o": {"k": [1, 2]}, "q": 7}')
        bad = message("c2", "t/2", b'{"i": "42", "f": 1.5, "o": null, "q": 1}')    # a string for a bigint
        good2 = message("c3", "t/3", b'{"i": 1, "f": 0.25, "o": "s", "q": null}')
        results = await asyncio.gather(*(engine.on_publish(m) for m in (good, bad, good2)), return_exceptions=True)
        metrics = engine.metrics()
        await engine.stop()
        return results, metrics

    results, metrics = asyncio.run(scenario())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], RuleDeliveryError) and "bad_param" in str(results[1])
    assert rows(conn, "SELECT * FROM typed ORDER BY q NULLS LAST") == [
        ("1", 42, 2.0, False, {"k": [1, 2]}, None, 7),
        ("1", 1, 0.25, False, "s", None, None)]
    assert metrics["actions"]["pgsql:typed"]["failed"] == 1
    assert metrics["rules"]["typed"]["actions.failed"] == 1


PRESENCE = """CREATE TABLE presence (id bigserial, clientid text, event text, reason text, at_ms bigint,
                                     connected_at_ms bigint, role text)"""


def test_events_and_where_filtering_of_takeover_disconnects(tmp_path, db_url, conn):
    with conn.cursor() as cur:
        cur.execute(PRESENCE)
        cur.execute("CREATE TABLE denied (clientid text, topic text, action text, at_ms bigint)")
    prod = load_config(paths.emqx_conf(), {})
    rules = {k: prod.rules[k].sql.replace('"', '\\"') for k in
             ("fleet_client_connected", "fleet_client_disconnected", "fleet_authz_denied")}
    presence_sql = ("INSERT INTO presence (clientid, event, reason, at_ms, connected_at_ms, role) "
                    "VALUES (${clientid}, ${event}, ${reason}, ${at_ms}, ${connected_at}, ${role})")
    denied_sql = ("INSERT INTO denied (clientid, topic, action, at_ms) "
                  "VALUES (${clientid}, ${topic}, ${action}, ${timestamp})")
    cfg = conf_from(tmp_path, pg_connector_conf(db_url) + f"""
actions.pgsql.presence {{ connector = db, parameters.sql = "{presence_sql}"
  resource_opts.inflight_window = 1 }}
actions.pgsql.denied {{ connector = db, parameters.sql = "{denied_sql}" }}
rule_engine.rules.connected {{ sql = "{rules['fleet_client_connected']}", actions = ["pgsql:presence"] }}
rule_engine.rules.disconnected {{ sql = "{rules['fleet_client_disconnected']}", actions = ["pgsql:presence"] }}
rule_engine.rules.denied {{ sql = "{rules['fleet_authz_denied']}", actions = ["pgsql:denied"] }}
""")
    client = ClientInfo(clientid="veh-1", username="veh-1", password=b"x", peerhost="127.0.0.1", peerport=1,
                        connected_at=1000, client_attrs={"role": "vehicle"})
    newer = ClientInfo(clientid="veh-1", username="veh-1", password=b"x", peerhost="127.0.0.1", peerport=2,
                       connected_at=2000, client_attrs={"role": "vehicle"})

    async def scenario():
        engine = RuleEngine(cfg)
        await engine.start()
        engine.client_connected(client)
        engine.client_connected(newer)
        engine.client_disconnected(client, "takenover", disconnected_at=2001)   # filtered by WHERE
        engine.client_disconnected(newer, "keepalive_timeout", disconnected_at=3000)
        engine.authz_complete(newer, "publish", "fleet/v1/veh-2/telemetry", "deny", "http")
        engine.authz_complete(newer, "publish", "fleet/v1/veh-1/telemetry", "allow", "cache")
        await eventually(lambda: len(rows(conn, "SELECT * FROM presence")) == 3 and
                         len(rows(conn, "SELECT * FROM denied")) == 1)
        metrics = engine.metrics()
        await engine.stop()
        return metrics

    metrics = asyncio.run(scenario())
    assert rows(conn, "SELECT clientid, event, reason, at_ms, connected_at_ms, role FROM presence ORDER BY id") == [
        ("veh-1", "client.connected", None, 1000, 1000, "vehicle"),
        ("veh-1", "client.connected", None, 2000, 2000, "vehicle"),
        ("veh-1", "client.disconnected", "keepalive_timeout", 3000, 2000, "vehicle")]
    [(cid, topic, action, at_ms)] = rows(conn, "SELECT * FROM denied")
    assert (cid, topic, action) == ("veh-1", "fleet/v1/veh-2/telemetry", "publish") and at_ms > 0
    assert metrics["rules"]["disconnected"]["failed.no_result"] == 1
    assert metrics["rules"]["denied"]["failed.no_result"] == 1


def _per_client_sequences(conn) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = {}
    for clientid, payload_b64 in rows(conn, "SELECT clientid, payload_b64 FROM inbox ORDER BY id"):
        seqs.setdefault(clientid, []).append(int(base64.b64decode(payload_b64)))
    return seqs


@pytest.mark.slow
def test_database_outage_buffers_then_delivers_everything_in_order(tmp_path, db_url, inbox, caplog):
    parts = db_parts(db_url)
    proxy_port = free_port()
    cfg = conf_from(tmp_path, rules_conf(db_url, server=f"127.0.0.1:{proxy_port}"))
    clients, per_client = 5, 20

    async def scenario():
        proxy = TcpProxy(parts["host"], parts["port"], proxy_port)      # not listening yet: the DB is "down"
        engine = RuleEngine(cfg)
        await engine.start()
        assert engine.metrics()["connectors"]["pgsql:db"] != "connected"
        tasks = []
        for seq in range(per_client):
            for c in range(clients):
                for kind in ("mission", "telemetry"):
                    msg = message(f"veh-{c}", f"fleet/v1/veh-{c}/{kind}", str(seq).encode())
                    tasks.append(asyncio.ensure_future(engine.on_publish(msg)))
        def waiting(action_id: str) -> bool:
            m = engine.metrics()["actions"][action_id]
            return m["queuing"] + m["inflight"] == clients * per_client
        await eventually(lambda: waiting("pgsql:mission") and waiting("pgsql:telemetry"))
        # Each action has tried the database and failed (its first batch is being retried) before it comes back:
        # without this wait a slow machine (coverage, parallel tests) could bring it back before the first try.
        await eventually(lambda: {getattr(r, "action", None) for r in caplog.records
                                  if getattr(r, "event", None) == "action.retrying"} >= {"pgsql:mission",
                                                                                          "pgsql:telemetry"},
                         message="an action never tried the database while it was down")
        assert not any(t.done() for t in tasks)           # every request waits for the database, none given up
        queued = engine.metrics()["actions"]["pgsql:mission"]["queuing"]
        await proxy.start()                               # the database comes back
        await asyncio.gather(*tasks)
        metrics = engine.metrics()
        await engine.stop()
        await proxy.stop()
        return queued, metrics

    queued, metrics = asyncio.run(scenario())
    assert queued > 0
    seqs = _per_client_sequences(inbox)
    mission_rows = rows(inbox, "SELECT clientid, payload_b64 FROM inbox WHERE topic LIKE '%/mission' ORDER BY id")
    mission: dict[str, list[int]] = {}
    for clientid, payload_b64 in mission_rows:
        mission.setdefault(clientid, []).append(int(base64.b64decode(payload_b64)))
    assert mission == {f"veh-{c}": list(range(per_client)) for c in range(clients)}   # inflight 1: in order
    assert {c: sorted(s) for c, s in seqs.items()} == \
        {f"veh-{c}": sorted(list(range(per_client)) * 2) for c in range(clients)}   # nothing lost, nothing twice
    for action_id in ("pgsql:mission", "pgsql:telemetry"):
        m = metrics["actions"][action_id]
        # EMQX counts requests, not attempts: each request that needed a retry once, as retried and retried.success
        assert (m["success"], m["failed"], m["dropped"]) == (clients * per_client, 0, 0)
        assert m["retried"] == m["retried.success"] >= 1


@pytest.mark.slow
def test_connections_terminated_mid_stream_fail_only_what_was_running_and_count_it(tmp_path, db_url, inbox,
                                                                                   pg_admin_url):
    """pg_terminate_backend under load: a statement running on a killed connection fails (EMQX's epgsql answers
    {error, sock_closed}, which emqx_postgresql handle_result makes unrecoverable: dropped, counted failed), every
    other message lands — once, in order. Nothing is lost without being counted as failed."""
    cfg = conf_from(tmp_path, rules_conf(db_url))
    database = db_parts(db_url)["database"]
    clients, per_client = 3, 100

    def terminate() -> int:
        admin = psycopg2.connect(pg_admin_url)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = %s AND application_name = 'emqx-standin'", (database,))
            killed = cur.fetchone()[0]
        admin.close()
        return killed

    async def publisher(engine: RuleEngine, c: int, halfway: asyncio.Event) -> list[int]:
        failed = []
        for seq in range(per_client):                    # one at a time, so the outcome of each is known
            try:
                await engine.on_publish(message(f"veh-{c}", f"fleet/v1/veh-{c}/mission", str(seq).encode()))
            except RuleDeliveryError:
                failed.append(seq)
            if seq == per_client // 2:
                halfway.set()
        return failed

    async def scenario():
        engine = RuleEngine(cfg)
        await engine.start()
        halfway = asyncio.Event()
        tasks = [asyncio.ensure_future(publisher(engine, c, halfway)) for c in range(clients)]
        await halfway.wait()
        killed = terminate()
        failed = await asyncio.gather(*tasks)
        metrics = engine.metrics()
        await engine.stop()
        return killed, failed, metrics

    killed, failed, metrics = asyncio.run(scenario())
    assert killed >= 1
    stored = _per_client_sequences(inbox)
    for c in range(clients):
        got = stored.get(f"veh-{c}", [])
        assert got == sorted(set(got))                           # each at most once, in order
        # Not stored ⇒ reported failed. (A failed one may be stored: killed after its COMMIT, the outcome is unknown
        # to the client — EMQX counts it failed all the same.)
        assert set(range(per_client)) - set(got) <= set(failed[c])
    failures = sum(len(f) for f in failed)
    assert failures <= clients                                # at most the statement each connection was running
    mission = metrics["actions"]["pgsql:mission"]
    assert (mission["success"], mission["failed"], mission["dropped"]) == (clients * per_client - failures,
                                                                           failures, 0)


def test_an_sql_error_drops_the_whole_batch_as_failed_without_a_retry(tmp_path, db_url, inbox):
    """emqx_postgresql on_batch_query → handle_batch_result: one row PostgreSQL refuses fails the batch it is in;
    every request of the batch is counted failed, and none is retried."""
    with inbox.cursor() as cur:
        cur.execute("ALTER TABLE inbox ADD CONSTRAINT no_poison CHECK (payload_b64 <> 'cG9pc29u')")   # "poison"
    cfg = conf_from(tmp_path, rules_conf(db_url, telemetry_opts='batch_size = 10, batch_time = "1h"'))

    async def scenario():
        engine = RuleEngine(cfg)
        await engine.start()
        payloads = [b"1", b"2", b"poison", b"4", b"5", b"6", b"7", b"8", b"9", b"10"]     # one full batch
        results = await asyncio.gather(*(engine.on_publish(message("veh-1", "fleet/v1/veh-1/telemetry", p))
                                         for p in payloads), return_exceptions=True)
        metrics = engine.metrics()
        await engine.stop()
        return results, metrics

    results, metrics = asyncio.run(scenario())
    assert all(isinstance(r, RuleDeliveryError) and "CheckViolation" in str(r) for r in results)
    assert rows(inbox) == []
    action = metrics["actions"]["pgsql:telemetry"]
    assert (action["matched"], action["failed"], action["success"], action["retried"]) == (10, 10, 0, 0)
    rule = metrics["rules"]["telemetry"]
    assert (rule["actions.failed"], rule["actions.failed.unknown"], rule["actions.success"]) == (10, 10, 0)


def test_stop_flushes_partial_batches(tmp_path, db_url, inbox):
    cfg = conf_from(tmp_path, rules_conf(db_url, telemetry_opts='batch_size = 100, batch_time = "1h"'))

    async def scenario():
        engine = RuleEngine(cfg)
        await engine.start()
        tasks = [asyncio.ensure_future(engine.on_publish(message("veh-1", "fleet/v1/veh-1/telemetry", b"%d" % i)))
                 for i in range(3)]
        await eventually(lambda: engine.metrics()["actions"]["pgsql:telemetry"]["queuing"] == 3)
        assert not any(t.done() for t in tasks)            # waiting for the batch to fill
        await engine.stop()                                # flushes instead of waiting an hour
        return await asyncio.gather(*tasks)

    assert asyncio.run(scenario()) == [None, None, None]
    assert _per_client_sequences(inbox) == {"veh-1": [0, 1, 2]}


def test_request_ttl_expiry_fails_the_publish(tmp_path, db_url, inbox):
    cfg = conf_from(tmp_path, rules_conf(db_url, server=f"127.0.0.1:{free_port()}", ttl="300ms"))

    async def scenario():
        engine = RuleEngine(cfg)
        await engine.start()
        with pytest.raises(RuleDeliveryError, match="expired"):
            await engine.on_publish(message("veh-1", "fleet/v1/veh-1/mission", b"1"))
        metrics = engine.metrics()
        await engine.stop()
        return metrics

    metrics = asyncio.run(scenario())
    assert metrics["actions"]["pgsql:mission"]["dropped.expired"] == 1
    assert metrics["rules"]["mission"]["actions.failed"] == 1


def test_production_actions_write_the_ingest_inboxes_as_fleet_ingest(db_url, stack, conn):
    """The real emqx.conf rules and SQL, against the ingest inbox views of sql/code/, logged in as fleet_ingest."""
    p = db_parts(db_url)
    env = {"EMQX_CONNECTORS__PGSQL__FLEET_DB__SERVER": f'"{p["host"]}:{p["port"]}"',
           "EMQX_CONNECTORS__PGSQL__FLEET_DB__DATABASE": p["database"],
           "EMQX_CONNECTORS__PGSQL__FLEET_DB__USERNAME": "fleet_ingest",
           "EMQX_CONNECTORS__PGSQL__FLEET_DB__PASSWORD": stack.secrets["FLEET_INGEST_DB_PASSWORD"],
           "EMQX_CONNECTORS__HTTP__AUTHSVC__URL": f"http://127.0.0.1:{free_port()}"}
    cfg = load_config(paths.emqx_conf(), env)

    async def scenario():
        engine = RuleEngine(cfg)
        await engine.start()
        await asyncio.gather(
            engine.on_publish(message("veh-9", "fleet/v1/veh-9/telemetry", b"\xff not json")),
            engine.on_publish(message("veh-9", "fleet/v1/veh-8/status", b"{}")),
            engine.on_publish(message("veh-9", "fleet/v1/veh-9/mission", b"[]")),
        )
        metrics = engine.metrics()
        await engine.stop()
        return metrics

    metrics = asyncio.run(scenario())
    assert metrics["connectors"]["pgsql:fleet_db"] == "connected"
    # telemetry is queued for the worker (sql/100_telemetry_queue.sql); drain it as the worker does
    assert rows(conn, "SELECT clientid, topic FROM ingest.telemetry_inbox") == [("veh-9", "fleet/v1/veh-9/telemetry")]
    assert rows(conn, "SELECT taken FROM ingest.drain_telemetry()") == [(1,)]
    rejected = rows(conn, "SELECT clientid, topic, reason, payload FROM rejected_messages ORDER BY topic")
    assert [(r[0], r[1]) for r in rejected] == [("veh-9", "fleet/v1/veh-8/status"),
                                                ("veh-9", "fleet/v1/veh-9/mission"),
                                                ("veh-9", "fleet/v1/veh-9/telemetry")]
    assert rejected[0][2] == "topic_client_mismatch"
    assert bytes(rejected[2][3]) == b"\xff not json"
