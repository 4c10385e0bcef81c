"""docker-compose.yml, emqx/emqx.conf, .env.example and the services' settings must agree with each other.

No Docker engine runs here, so this is checked statically: every host, port, URL, path, role, database name
and environment variable that one file relies on must be what the other provides.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from pyhocon import ConfigFactory

from fleetcore.config import ConfigError
from fleetctl import dbadmin
from fleetctl.stack import Ports, Stack, StackConfig

ROOT = Path(__file__).resolve().parents[1]
EMQX_TAG = "emqx/emqx-enterprise:5.10.4"
# Keys EMQX has built in that our emqx.conf does not spell out (both modes set the dashboard password).
EMQX_BUILTIN_KEYS = {("node", "name"), ("node", "cookie"), ("dashboard", "default_password")}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def emqx_conf():
    return ConfigFactory.parse_file(str(ROOT / "emqx" / "emqx.conf"))


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key] = value
    return values


_VAR = re.compile(r"\$\$|\$\{([A-Z0-9_]+)(?:(:\?|:-)([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation (${X}, ${X:-default}, ${X:?error}, $$)."""
    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env and env[name] != "":
            return env[name]
        if op == ":-":
            return arg
        raise AssertionError(f"${{{name}}} is required by docker-compose.yml but not set in .env.example")
    return _VAR.sub(replace, value)


def service_env(compose: dict, service: str, env: dict[str, str]) -> dict[str, str]:
    raw = compose["services"][service].get("environment", {})
    return {key: interpolate(str(value), env) for key, value in raw.items()}


def test_emqx_is_pinned_and_the_config_says_which(compose):
    assert compose["services"]["emqx"]["image"] == EMQX_TAG
    assert EMQX_TAG in (ROOT / "emqx" / "emqx.conf").read_text()


def test_every_variable_compose_uses_is_in_env_example_and_vice_versa(env_example):
    text = (ROOT / "docker-compose.yml").read_text()
    used = {m.group(1) for m in _VAR.finditer(text) if m.group(1)}
    assert used - set(env_example) == set(), "add these to .env.example"
    assert set(env_example) - used == set(), "unused in docker-compose.yml"
    for key, value in env_example.items():
        if key != "FLEET_EMQX_API_KEY":
            assert value.startswith("change-me"), f"{key} in .env.example must be a placeholder, not a real value"


def test_broker_calls_authsvc_where_authsvc_listens(compose, emqx_conf, env_example):
    bind = service_env(compose, "authsvc", env_example)["AUTHSVC_BIND"]
    port = int(bind.rsplit(":", 1)[1])
    urls = [emqx_conf["authentication"][0]["url"], emqx_conf["authorization"]["sources"][0]["url"],
            emqx_conf["connectors"]["http"]["authsvc"]["url"]]
    for url in urls:
        parsed = urlparse(url)
        assert parsed.hostname == "authsvc" and parsed.port == port, url
    paths = {urlparse(urls[0]).path, urlparse(urls[1]).path, emqx_conf["actions"]["http"]["registration"]
             ["parameters"]["path"]}
    assert paths == {"/mqtt/authn", "/mqtt/authz", "/mqtt/register"}


def test_broker_writes_to_the_database_the_migrations_create(compose, emqx_conf, env_example):
    connector = emqx_conf["connectors"]["pgsql"]["fleet_db"]
    host, port = connector["server"].split(":")
    assert host in compose["services"] and host == "postgres" and port == "5432"
    assert connector["database"] == dbadmin.DATABASE
    assert connector["username"] == dbadmin.INGEST_ROLE
    for service in ("authsvc", "api", "worker", "migrate"):
        url = urlparse(service_env(compose, service, env_example)["DATABASE_URL"])
        assert (url.hostname, url.port, url.path.lstrip("/"), url.username) == \
            ("postgres", 5432, dbadmin.DATABASE, dbadmin.APP_ROLE), service
    migrate = service_env(compose, "migrate", env_example)
    assert {"FLEET_DB_ADMIN_URL", "FLEET_DB_PASSWORD", "FLEET_INGEST_DB_PASSWORD"} <= set(migrate)
    assert service_env(compose, "emqx", env_example)["EMQX_CONNECTORS__PGSQL__FLEET_DB__PASSWORD"] == \
        migrate["FLEET_INGEST_DB_PASSWORD"]


def test_services_reach_the_broker_api_with_the_key_the_broker_loads(compose, emqx_conf, env_example):
    emqx = compose["services"]["emqx"]
    entrypoint = " ".join(emqx["entrypoint"])
    assert emqx_conf["api_key"]["bootstrap_file"] in entrypoint
    assert str(emqx_conf["dashboard"]["listeners"]["http"]["bind"]) == "18083"
    assert "18083:18083" in emqx["ports"]
    emqx_env = service_env(compose, "emqx", env_example)
    for service in ("authsvc", "api", "worker"):
        env = service_env(compose, service, env_example)
        url = urlparse(env["FLEET_EMQX_API_URL"])
        assert (url.hostname, url.port) == ("emqx", 18083)
        assert env["FLEET_EMQX_API_KEY"] == emqx_env["FLEET_EMQX_API_KEY"]
        assert env["FLEET_EMQX_API_SECRET"] == emqx_env["FLEET_EMQX_API_SECRET"]


def test_the_shared_broker_token_is_the_same_on_both_sides(compose, env_example):
    emqx_env = service_env(compose, "emqx", env_example)
    token = service_env(compose, "authsvc", env_example)["FLEET_BROKER_TOKEN"]
    for key in ("EMQX_AUTHENTICATION__1__HEADERS", "EMQX_AUTHORIZATION__SOURCES__1__HEADERS",
                "EMQX_CONNECTORS__HTTP__AUTHSVC__HEADERS"):
        header = ConfigFactory.parse_string(f"h = {emqx_env[key]}")["h"]
        assert header["x-fleet-broker-token"] == token, key


def _conf_has(conf, path: list[str]) -> bool:
    node = conf
    for part in path:
        if isinstance(node, list):
            index = int(part) - 1
            if not 0 <= index < len(node):
                return False
            node = node[index]
        elif part in node:
            node = node[part]
        else:
            return False
    return True


def test_every_emqx_override_in_compose_targets_a_real_key(compose, emqx_conf):
    builtin = EMQX_BUILTIN_KEYS
    for key in compose["services"]["emqx"]["environment"]:
        if not key.startswith("EMQX_"):
            continue
        path = key[len("EMQX_"):].lower().split("__")
        assert tuple(path) in builtin or _conf_has(emqx_conf, path), f"{key} overrides nothing in emqx.conf"


def test_both_modes_override_the_same_secrets(compose, tmp_path):
    """The embedded launcher sets the same EMQX_* secret overrides as Compose (plus local addresses)."""
    stack = Stack(StackConfig(state_dir=tmp_path, ports=Ports()), out=lambda m: None)
    embedded = {k for k in stack.broker_env() if k.startswith("EMQX_")}
    production = {k for k in compose["services"]["emqx"]["environment"] if k.startswith("EMQX_")}
    secrets = {k for k in production if k.endswith("HEADERS") or (k.endswith("PASSWORD") and "CONNECTORS" in k)}
    assert secrets <= embedded
    conf = ConfigFactory.parse_file(str(ROOT / "emqx" / "emqx.conf"))
    for key in embedded:
        path = key[len("EMQX_"):].lower().split("__")
        # `enable` exists on every listener in EMQX's schema even where the file does not spell it out
        exists = (_conf_has(conf, path) or (path[-1] == "enable" and _conf_has(conf, path[:-1]))
                  or tuple(path) in EMQX_BUILTIN_KEYS)
        assert exists, f"{key} overrides nothing in emqx.conf"


def test_tls_listener_uses_the_files_the_cert_script_makes(compose, emqx_conf):
    mounts = compose["services"]["emqx"]["volumes"]
    target = next(m.split(":")[1] for m in mounts if m.startswith("./emqx/certs:"))
    options = emqx_conf["listeners"]["ssl"]["default"]["ssl_options"]
    script = (ROOT / "scripts" / "make-certs.sh").read_text()
    for key, name in (("cacertfile", "ca.pem"), ("certfile", "server.pem"), ("keyfile", "server.key")):
        assert options[key] == f"{target}/{name}"
        assert f'$OUT_DIR/{name}' in script


def test_mtls_listener_trusts_the_fleet_ca_that_authsvc_signs_with(compose, emqx_conf, env_example):
    """Certificate identity: the broker's mTLS listener verifies vehicles against the fleet CA's certificate, the
    one authsvc signs their CSRs with; only authsvc gets the CA's key (docs/OPERATIONS.md, Certificate identity)."""
    options = emqx_conf["listeners"]["ssl"]["mtls"]["ssl_options"]
    assert (options["verify"], options["fail_if_no_peer_cert"]) == ("verify_peer", True)
    emqx_mounts = {m.split(":")[1]: m.split(":")[0] for m in compose["services"]["emqx"]["volumes"]}
    authsvc_mounts = {m.split(":")[1]: m.split(":")[0] for m in compose["services"]["authsvc"]["volumes"]}
    authsvc = service_env(compose, "authsvc", env_example)
    ca_dir = authsvc_mounts[str(Path(authsvc["AUTHSVC_FLEET_CA_CERT_FILE"]).parent)]
    assert emqx_mounts[options["cacertfile"]] == f"{ca_dir}/fleet-ca.pem"
    assert authsvc["AUTHSVC_FLEET_CA_KEY_FILE"] == f"{Path(authsvc['AUTHSVC_FLEET_CA_CERT_FILE']).parent}/fleet-ca.key"
    assert not any(source.startswith(ca_dir) and not source.endswith(".pem") for source in emqx_mounts.values()), \
        "the broker never gets the CA key"
    port = emqx_conf["listeners"]["ssl"]["mtls"]["bind"].rsplit(":", 1)[1]
    assert f"{port}:{port}" in " ".join(compose["services"]["emqx"]["ports"])


def test_the_services_start_from_the_compose_environment(compose, env_example):
    from api.config import ApiConfig, WorkerConfig
    from authsvc.config import AuthsvcConfig
    for service, config_class in (("authsvc", AuthsvcConfig), ("api", ApiConfig), ("worker", WorkerConfig)):
        config = config_class.from_env(service_env(compose, service, env_example))
        assert config.emqx_api_url == "http://emqx:18083", service
    api_port = service_env(compose, "api", env_example)["API_BIND"].rsplit(":", 1)[1]
    assert f"{api_port}:{api_port}" in compose["services"]["api"]["ports"]
    worker_bind = service_env(compose, "worker", env_example)["WORKER_BIND"]
    assert f"http://{worker_bind}/healthz" in " ".join(compose["services"]["worker"]["healthcheck"]["test"])


def test_authsvc_is_reachable_from_the_compose_network_only(compose, env_example):
    """Only the broker calls authsvc: no published port, and its servers' settings come from compose."""
    from api.config import ApiServerConfig
    from authsvc.config import AuthsvcServerConfig
    assert "ports" not in compose["services"]["authsvc"]
    authsvc = AuthsvcServerConfig.from_env(service_env(compose, "authsvc", env_example))
    everywhere = "0.0.0.0"  # noqa: S104 - what the containers bind
    assert authsvc.address() == (everywhere, 8081) and authsvc.header_timeout_ms() == 60_000
    assert ApiServerConfig.from_env(service_env(compose, "api", env_example)).address() == (everywhere, 8080)


def test_the_migrate_job_creates_the_first_admin_before_any_service_starts(compose, env_example):
    from api.first_admin import PASSWORD_VARIABLE, check_password
    migrate = compose["services"]["migrate"]
    assert migrate["command"][-1].endswith("fleetctl db migrate && fleetctl create-admin")
    check_password(service_env(compose, "migrate", env_example)[PASSWORD_VARIABLE])
    for name, service in compose["services"].items():
        if name not in ("postgres", "migrate"):
            assert PASSWORD_VARIABLE not in service.get("environment", {}), f"{name} does not need the admin password"
            assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name


def test_images_run_the_same_commands_as_the_embedded_stack(compose, tmp_path):
    stack = Stack(StackConfig(state_dir=tmp_path, ports=Ports()), out=lambda m: None)
    commands = {c.name: c.argv[1:] for c in stack._components()}  # after the interpreter
    for service in ("authsvc", "api", "worker"):
        command = compose["services"][service]["command"]
        assert (command[1:] if command[0] == "python" else ["-m", *command]) == commands[service], service


# -- rule actions -----------------------------------------------------------------------------------------------
_PLAIN_INSERT = re.compile(r"INSERT INTO [a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)? \(([a-z0-9_, ]+)\) "
                           r"VALUES \(((?:\$\{[A-Za-z0-9_.]+\}(?:, )?)+)\)")


def plain_insert_problem(sql: str) -> str | None:
    """Why ``sql`` is not a plain ``INSERT INTO t (cols) VALUES (${placeholders})``, or None.

    EMQX 5.10.4 crashes on batched SQL that returns rows — ``RETURNING`` or a ``SELECT`` — and then retries the
    batch it already committed (EMQX#17701, docs/EMQX.md §5.6a); anything beyond one plain INSERT per row also
    breaks the one-row-per-request contract of the ingest views."""
    if re.search(r"\bRETURNING\b", sql, re.IGNORECASE):
        return "uses RETURNING"
    match = _PLAIN_INSERT.fullmatch(sql)
    if match is None:
        return "is not a plain INSERT INTO table (columns) VALUES (${placeholders})"
    columns, values = match.group(1).split(", "), match.group(2).split(", ")
    if len(columns) != len(values):
        return f"names {len(columns)} columns for {len(values)} values"
    return None


@pytest.mark.parametrize("sql, problem", [
    ("INSERT INTO ingest.t (a, b) VALUES (${a}, ${b})", None),
    ("INSERT INTO ingest.t (a) VALUES (${a}) RETURNING id", "uses RETURNING"),
    ("insert into t (a) values (${a}) returning *", "uses RETURNING"),
    ("INSERT INTO t (a) SELECT ${a}", "is not a plain INSERT"),
    ("WITH x AS (SELECT 1) INSERT INTO t (a) VALUES (${a})", "is not a plain INSERT"),
    ("INSERT INTO t (a) VALUES (${a}) ON CONFLICT DO NOTHING", "is not a plain INSERT"),
    ("INSERT INTO t (a) VALUES (${a});", "is not a plain INSERT"),
    ("INSERT INTO t (a) VALUES ('${a}')", "is not a plain INSERT"),
    ("SELECT f(${a})", "is not a plain INSERT"),
    ("INSERT INTO t (a, b) VALUES (${a})", "names 2 columns for 1 values"),
])
def test_the_plain_insert_check_tells_what_is_wrong(sql, problem):
    found = plain_insert_problem(sql)
    assert (found is None) if problem is None else (found is not None and found.startswith(problem))


def test_every_action_sql_is_a_plain_insert_without_returning(emqx_conf):
    actions = emqx_conf["actions"]["pgsql"]
    assert actions, "no pgsql actions"
    problems = {name: plain_insert_problem(action["parameters"]["sql"]) for name, action in actions.items()}
    assert {name: problem for name, problem in problems.items() if problem} == {}


def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(KB|MB|GB)", size).groups()
    return int(number) * 1024 ** {"KB": 1, "MB": 2, "GB": 3}[unit]


def test_every_action_bounds_its_buffer_and_the_docs_show_the_arithmetic(emqx_conf):
    """EMQX buffers up to worker_pool_size × max_buffer_bytes per action while its target is down (16 × 256MB by
    default, docs/EMQX.md §5.6a): every action sets both, and docs/OPERATIONS.md lists the same figures."""
    operations = (ROOT / "docs" / "OPERATIONS.md").read_text()
    total = 0
    for kind, actions in emqx_conf["actions"].items():
        for name, action in actions.items():
            opts = action["resource_opts"]
            assert {"worker_pool_size", "max_buffer_bytes"} <= set(opts), f"{kind}:{name} relies on the defaults"
            workers, size = int(opts["worker_pool_size"]), str(opts["max_buffer_bytes"])
            total += workers * _bytes(size)
            row = f"| `{kind}:{name}` | {workers} × {size[:-2]} {size[-2:]} |"
            assert row in operations, f"docs/OPERATIONS.md lacks the row {row}"
    assert total == 2688 * 1024 ** 2
    assert "2,688 MB" in operations


def test_no_action_sets_an_option_emqx_ignores(emqx_conf):
    """parameters.request_timeout of an HTTP action is deprecated since 5.0.26 and ignored (request_ttl is the limit);
    inflight_window has no effect on the always-synchronous PostgreSQL connector (docs/EMQX.md §5.6a)."""
    for name, action in emqx_conf["actions"]["http"].items():
        assert "request_timeout" not in action["parameters"], f"http:{name}"
    for name, action in emqx_conf["actions"]["pgsql"].items():
        assert "inflight_window" not in action.get("resource_opts", {}), f"pgsql:{name}"


def test_emqx_has_time_to_boot_before_failed_health_checks_count(compose):
    """Dependents wait for EMQX to be healthy; without a start period a slow first boot (longer than interval ×
    retries) marks it unhealthy and api and worker never start."""
    health = compose["services"]["emqx"]["healthcheck"]
    seconds = {key: int(re.fullmatch(r"(\d+)s", health[key]).group(1)) for key in ("interval", "start_period")}
    assert seconds["start_period"] >= 120 > seconds["interval"] * health["retries"]
    for service in ("api", "worker"):
        assert compose["services"][service]["depends_on"]["emqx"] == {"condition": "service_healthy"}, service


@pytest.mark.parametrize("seconds", ["0", "90"])
def test_a_header_timeout_the_server_cannot_honour_is_refused(seconds):
    from authsvc.config import AuthsvcServerConfig
    with pytest.raises(ConfigError, match="header timeout"):
        AuthsvcServerConfig.from_env({"AUTHSVC_HEADER_TIMEOUT_S": seconds}).header_timeout_ms()
