"""emqx.conf loading: HOCON, EMQX_* overrides with EMQX's rules, typed values and strict validation."""
from __future__ import annotations

import pytest

from emqx.standin.config import (
    ConfigError,
    FlappingConfig,
    load_config,
    parse_bytesize,
    parse_duration,
    parse_env_value,
    parse_rate,
)
from emqx.standin.limiter import LimiterOptions, Rate
from fleetcore import paths
from fleetctl.stack import Stack, StackConfig
from tests.broker.compat_support import conf_from, write_conf
from tests.conftest import free_ports

AUTHN = """
authentication = [{
  mechanism = password_based, backend = http, method = post, url = "http://127.0.0.1:1/mqtt/authn"
  headers { "content-type" = "application/json", "x-fleet-broker-token" = "" }
  body { clientid = "${clientid}", password = "${password}" }
  request_timeout = "5s"
}]
"""


def test_production_conf_loads_with_the_stack_environment(tmp_path):
    stack = Stack(StackConfig(state_dir=tmp_path, ports=free_ports(), durable=False), out=lambda _: None)
    env = stack.broker_env()
    cfg = load_config(paths.emqx_conf(), env)
    ports = stack.config.ports
    token = stack.secrets["FLEET_BROKER_TOKEN"]

    listeners = {listener.id: listener for listener in cfg.listeners}
    assert (listeners["tcp:default"].host, listeners["tcp:default"].port) == ("127.0.0.1", ports.mqtt)
    assert (listeners["ws:default"].port, listeners["ws:default"].mqtt_path) == (ports.mqtt_ws, "/mqtt")
    assert listeners["ssl:default"].enable is False           # no certificates in a fresh state dir
    assert listeners["wss:default"].enable is False
    assert (cfg.dashboard_host, cfg.dashboard_port) == ("127.0.0.1", ports.emqx_api)
    assert cfg.api_key_bootstrap_file == str(tmp_path.resolve() / "emqx" / "api_keys.txt")

    authn = cfg.authentication[0].http
    assert authn.url == f"http://127.0.0.1:{ports.authsvc}/mqtt/authn"
    # The env var replaces the whole headers object (hocon deep_put); POST keeps the JSON content type (EMQX default).
    assert authn.headers == {"content-type": "application/json", "x-fleet-broker-token": token}
    assert authn.request_timeout_s == 5.0 and authn.connect_timeout_s == 5.0 and authn.pool_size == 8

    az = cfg.authorization
    assert (az.no_match, az.deny_action, az.cache_enable, az.cache_max_size, az.cache_ttl_s) == \
        ("deny", "ignore", True, 32, 60.0)          # production: disconnect (EMBEDDED_LIMITS says why)
    assert az.sources[0].http.url == f"http://127.0.0.1:{ports.authsvc}/mqtt/authz"
    assert az.sources[0].http.headers["x-fleet-broker-token"] == token
    assert az.sources[0].http.body["role"] == "${client_attrs.role}"

    pg = cfg.pgsql_connectors["fleet_db"]
    host, port, database = stack.database_server
    assert (pg.host, pg.port, pg.database, pg.username) == (host, port, database, "fleet_ingest")
    assert pg.password == stack.secrets["FLEET_INGEST_DB_PASSWORD"]
    assert pg.password not in repr(pg)
    assert cfg.http_connectors["authsvc"].url == f"http://127.0.0.1:{ports.authsvc}"
    assert cfg.http_connectors["authsvc"].headers == {"x-fleet-broker-token": token}

    telemetry = cfg.actions["pgsql:telemetry_ingest"]
    assert telemetry.resource_opts.batch_size == 100
    assert telemetry.resource_opts.batch_time_s == pytest.approx(0.01)
    assert telemetry.resource_opts.request_ttl_s == 1800.0
    assert (telemetry.resource_opts.worker_pool_size, telemetry.resource_opts.max_buffer_bytes) == (8, 128 * 1024 ** 2)
    assert telemetry.parameters["sql"].sql == ("INSERT INTO ingest.telemetry_inbox (clientid, topic, payload_b64, "
                                              "received_at_ms) VALUES ($1, $2, $3, $4)")
    # Mission events stay in order by worker affinity (the pgsql connector is synchronous), not by inflight_window,
    # which the file leaves at its default because it has no effect on PostgreSQL (docs/EMQX.md §5.6a).
    mission = cfg.actions["pgsql:mission_ingest"].resource_opts
    assert (mission.batch_size, mission.inflight_window, mission.worker_pool_size, mission.max_buffer_bytes) == \
        (1, 100, 4, 256 * 1024 ** 2)
    registration = cfg.actions["http:registration"]
    assert registration.resource_opts.request_ttl_s == 60.0
    assert (registration.resource_opts.worker_pool_size, registration.resource_opts.max_buffer_bytes) == \
        (4, 16 * 1024 ** 2)
    assert cfg.rules["fleet_client_disconnected"].actions == ["pgsql:presence_ingest"]
    assert cfg.mqtt.session_expiry_interval_s == 7200 and cfg.mqtt.max_packet_size == 1024 * 1024
    assert cfg.mqtt.keepalive_multiplier == 1.5 and cfg.mqtt.idle_timeout_s == 15
    assert cfg.ignore_sys_message is True
    # Keys EMQX knows but the stand-in does not act on are reported, not silently dropped.
    assert "node.cookie" in cfg.unimplemented and "cluster" in cfg.unimplemented
    assert "EMQX_AUTHENTICATION__1__HEADERS" in cfg.env_overrides


def test_env_overrides_follow_emqx_rules(tmp_path):
    env = {
        "EMQX_AUTHENTICATION__1__URL": "http://10.0.0.1:8081/x",          # raw string (not valid HOCON)
        "EMQX_AUTHENTICATION__1__REQUEST_TIMEOUT": "2s",
        "EMQX_AUTHENTICATION__1__HEADERS": '{"X-Token" = "abc"}',        # a HOCON object replaces the object
        "EMQX_AUTHENTICATION__1__ENABLE": "false",                        # parsed as a boolean
        "EMQX_LISTENERS__TCP__DEFAULT__BIND": '"127.0.0.2:1999"',         # quoted because of ':'
        "EMQX_MQTT__MAX_INFLIGHT": "7",
        "EMQX_NODE_NAME": "ignored",                                      # unknown root: ignored like EMQX
        "FLEET_OTHER": "x",
    }
    cfg = conf_from(tmp_path, AUTHN, env)
    authn = cfg.authentication[0]
    assert authn.enable is False
    assert authn.http.url == "http://10.0.0.1:8081/x"
    assert authn.http.request_timeout_s == 2.0
    assert authn.http.headers == {"content-type": "application/json", "x-token": "abc"}
    tcp = next(listener for listener in cfg.listeners if listener.id == "tcp:default")
    assert (tcp.host, tcp.port) == ("127.0.0.2", 1999)
    assert cfg.mqtt.max_inflight == 7
    assert cfg.env_overrides == sorted(k for k in env if k.startswith("EMQX_") and k != "EMQX_NODE_NAME")


def test_env_array_index_is_one_based_and_may_append(tmp_path):
    env = {"EMQX_AUTHENTICATION__2": '{mechanism = password_based, backend = http, url = "http://127.0.0.1:2/a"}'}
    cfg = conf_from(tmp_path, AUTHN, env)
    assert [a.http.url for a in cfg.authentication] == ["http://127.0.0.1:1/mqtt/authn", "http://127.0.0.1:2/a"]
    assert cfg.authentication[1].http.request_timeout_s == 5.0          # authn default

    with pytest.raises(ConfigError, match="bad_array_index"):
        conf_from(tmp_path, AUTHN, {"EMQX_AUTHENTICATION__3__URL": "http://127.0.0.1:3/a"})
    with pytest.raises(ConfigError, match="indexes start at 1"):
        conf_from(tmp_path, AUTHN, {"EMQX_AUTHENTICATION__0__URL": "http://127.0.0.1:3/a"})


def test_env_whole_array_replaces_the_file_value(tmp_path):
    env = {"EMQX_AUTHORIZATION__SOURCES": '[{type = http, method = post, url = "http://127.0.0.1:9/acl"}]'}
    cfg = conf_from(tmp_path, "", env)
    assert [s.http.url for s in cfg.authorization.sources] == ["http://127.0.0.1:9/acl"]
    assert cfg.authorization.sources[0].http.request_timeout_s == 30.0    # authz default is 30 s (docs/EMQX.md §4.2)


def test_env_vars_apply_in_alphabetical_order(tmp_path):
    # EMQX_AUTHENTICATION (whole array) sorts before EMQX_AUTHENTICATION__1__URL, so the field wins.
    env = {"EMQX_AUTHENTICATION__1__URL": "http://127.0.0.1:7/late",
           "EMQX_AUTHENTICATION": '[{mechanism = password_based, backend = http, url = "http://127.0.0.1:6/x"}]'}
    cfg = conf_from(tmp_path, AUTHN, env)
    assert cfg.authentication[0].http.url == "http://127.0.0.1:7/late"


@pytest.mark.parametrize("raw, expected", [
    ("false", False), ("42", 42), ("1.5", 1.5), ("fleet_ingest", "fleet_ingest"), ('"a:b"', "a:b"),
    ("http://127.0.0.1:8081/mqtt/authn", "http://127.0.0.1:8081/mqtt/authn"), ("", ""),
    ('{"x-fleet-broker-token" = "s3cr3t"}', {"x-fleet-broker-token": "s3cr3t"}),
    ("[1, 2]", [1, 2]), ("${clientid}", "${clientid}"),
])
def test_env_value_parsing(raw, expected):
    assert parse_env_value(raw) == expected


@pytest.mark.parametrize("text, seconds", [("100ms", 0.1), ("5s", 5), ("1m", 60), ("2h", 7200), ("1h30m", 5400),
                                           ("1d", 86400), (1500, 1.5), ("0ms", 0)])
def test_durations(text, seconds):
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("text, size", [("1MB", 1048576), ("64KB", 65536), ("256MB", 268435456), (1024, 1024),
                                        ("10b", 10)])
def test_byte_sizes(text, size):
    assert parse_bytesize(text, "x") == size


@pytest.mark.parametrize("bad", ["5 parsecs", "fast", True])
def test_bad_duration_is_refused(bad):
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(bad, "authorization.cache.ttl")


ACTION = """
connectors.pgsql.db { server = "127.0.0.1:5432", database = "d", username = "u", password = "p" }
actions.pgsql.sink { connector = db, parameters.sql = "INSERT INTO t (a) VALUES (${clientid})" }
"""


@pytest.mark.parametrize("body, message", [
    (ACTION + 'actions.kafka.k { connector = db }', "unknown action type 'kafka'"),
    (ACTION + 'rule_engine.rules.r { sql = """SELECT * FROM "t/#" """, actions = ["pgsql:missing"] }',
     "action 'pgsql:missing' does not exist"),
    (ACTION + 'rule_engine.rules.r { sql = """SELECT * FROM "t/#" """, actions = ["mongo:x"] }',
     "not a known action type"),
    (ACTION + 'rule_engine.rules.r { sql = """SELECT * FROM "t/#" """, actions = [{function = republish}] }',
     "built-in action 'republish' is not supported"),
    (ACTION + 'rule_engine.rules.r { sql = """SELECT sha256(payload) FROM "t/#" """, actions = [] }',
     r"function sha256\(\) is not supported"),
    (ACTION + 'rule_engine.rules.r { sql = """FOREACH payload.x FROM "t/#" """, actions = [] }',
     "FOREACH is not supported"),
    (ACTION + 'rule_engine.rules.r { sql = """SELECT * FROM "$events/message_dropped" """, actions = [] }',
     "event '\\$events/message_dropped' is not supported"),
    ('actions.pgsql.s { connector = nope, parameters.sql = "INSERT INTO t VALUES (1)" }',
     "connector pgsql:nope does not exist"),
    (ACTION + 'actions.pgsql.sink2 { connector = db, parameters.sql = "x", resource_opts.batch_sise = 2 }',
     "batch_sise: unknown field"),
    ('authorization.sources = [{type = file, path = "no-such-acl.conf"}]', "no-such-acl.conf: No such file"),
    ('authorization.sources = [{type = file, path = "acl.conf", rules = "x"}]', "rules: unknown field"),
    ('authorization.sources = [{type = mysql}]', "source type 'mysql' is not supported"),
    ('authorization.no_match = maybe', "no_match"),
    ('authentication = [{mechanism = password_based, backend = built_in_database}]',
     "password_based:built_in_database is not supported"),
    (AUTHN.replace('password = "${password}"', 'password = "${passwd}"'), r"placeholder \$\{passwd\} is not supported"),
    (AUTHN.replace("request_timeout", "reqeust_timeout"), "reqeust_timeout: unknown field"),
    ('listeners.quic.default { bind = 14567 }', "unknown listener type"),
    ('conectors {}', "conectors: unknown field"),
])
def test_config_emqx_would_refuse_fails_at_start(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        conf_from(tmp_path, body)


def test_default_authorization_source_is_the_acl_conf_beside_the_config(tmp_path):
    """Without authorization.sources EMQX reads ${EMQX_ETC_DIR}/acl.conf, the directory of emqx.conf."""
    path = write_conf(tmp_path, "")
    path.write_text(path.read_text().replace("authorization { no_match = deny, sources = [] }", ""))
    with pytest.raises(ConfigError, match=r"authorization.sources.1.path: .*acl.conf: No such file"):
        load_config(path, {})
    (tmp_path / "acl.conf").write_text('{deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.\n{allow, all}.\n')
    [source] = load_config(path, {}).authorization.sources
    assert (source.type, [r.permission for r in source.file_rules]) == ("file", ["deny", "allow"])


def test_hocon_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text("node { name = \n")
    with pytest.raises(ConfigError, match=r"bad\.conf"):
        load_config(path, {})


def test_unimplemented_keys_are_listed(tmp_path):
    cfg = conf_from(tmp_path, 'log.console.level = debug\nmqtt.max_awaiting_rel = 100\n')
    assert {"log", "mqtt.max_awaiting_rel", "node.cookie"} <= set(cfg.unimplemented)


def test_secret_from_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    cfg = conf_from(tmp_path, f'connectors.pgsql.db {{ server = "h", database = "d", username = "u", '
                              f'password = "file://{secret}" }}')
    assert cfg.pgsql_connectors["db"].password == "from-file"
    assert cfg.pgsql_connectors["db"].port == 5432


def test_production_conf_sets_the_protective_limits_on_every_listener():
    """emqx.conf as production reads it (no embedded overrides): per-client publish limits, connection rate,
    TLS handshake timeout, flapping detection, deny_action (docs/OPERATIONS.md "Broker limits")."""
    cfg = load_config(paths.emqx_conf(), {})
    listeners = {listener.id: listener for listener in cfg.listeners if listener.enable}
    assert set(listeners) == {"tcp:default", "ssl:default", "ssl:mtls", "ws:default"}
    for listener in listeners.values():
        assert listener.messages == LimiterOptions(Rate(10, 1000), Rate(300, 600_000)), listener.id
        assert listener.bytes == LimiterOptions(Rate(64 * 1024, 1000), Rate(16 * 1024 ** 2, 600_000)), listener.id
        assert listener.max_conn == LimiterOptions(Rate(1000, 1000)), listener.id
    assert listeners["ssl:default"].handshake_timeout_s == listeners["ssl:mtls"].handshake_timeout_s == 10.0
    # certificate identity: the mTLS listener requires a client certificate of the fleet CA (docs/EMQX.md §7)
    mtls = listeners["ssl:mtls"].ssl_options
    assert (mtls["verify"], mtls["fail_if_no_peer_cert"]) == ("verify_peer", True)
    assert mtls["cacertfile"].endswith("/fleet-ca.pem")
    assert listeners["ssl:default"].ssl_options["verify"] == "verify_none"
    assert cfg.mqtt.idle_timeout_s == 15.0 and cfg.mqtt.server_keepalive == 60
    assert cfg.flapping == FlappingConfig(enable=True, window_time_s=60.0, max_count=15, ban_time_s=300.0)
    assert cfg.authorization.deny_action == "disconnect"


@pytest.mark.parametrize(("text", "expected"), [
    ("10/s", Rate(10, 1000)), ("64KB/s", Rate(65536, 1000)), ("300/10m", Rate(300, 600_000)),
    ("5", Rate(5, 1000)), ("1MB/2h", Rate(1024 ** 2, 7_200_000)), ("100/500ms", Rate(100, 500)),
    (" 10/S ", Rate(10, 1000)), ("infinity", None),
])
def test_limiter_rates_read_as_emqx_reads_them(text, expected):
    assert parse_rate(text, "listeners.tcp.default.messages_rate") == expected


@pytest.mark.parametrize("text", ["0/s", "10/0s", "ten/s", "10/s/s", "10 per s", "-1/s", "10KiB/s"])
def test_a_bad_limiter_rate_is_refused_naming_the_key(tmp_path, text):
    conf = tmp_path / "emqx.conf"
    conf.write_text(f'listeners.tcp.default {{ bind = "127.0.0.1:1883", messages_rate = "{text}" }}\n')
    with pytest.raises(ConfigError, match=r"listeners\.tcp\.default\.messages_rate"):
        load_config(conf, {})
