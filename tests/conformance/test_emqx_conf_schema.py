"""emqx/emqx.conf against EMQX 5.10.4's own published configuration schema (the part in emqx-5.10.4-schema.json).

This is independent of the stand-in's strict reader (emqx/standin/config.py): that one knows what the stand-in
implements; this one knows what EMQX documents. Every key path must exist in the schema, every value must have the
schema's type (durations, byte sizes, enums, ranges, booleans, arrays, the member of a union its constant fields
select), and no key may be one the schema marks deprecated unless ALLOWED_DEPRECATED names it. The file is checked
as it is, with the EMQX_* overrides docker-compose.yml sets, and with those the embedded launcher sets.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pyhocon import ConfigFactory

from emqx.standin.config import _plain, apply_env_overrides
from fleetctl.stack import Ports, Stack, StackConfig
from tests.conformance.emqx_schema import Checker, parse_type
from tests.conformance.extract_emqx_schema import extract
from tests.test_production_config import service_env

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((Path(__file__).parent / "emqx-5.10.4-schema.json").read_text(encoding="utf-8"))

# Fields EMQX accepts that its published schema leaves out (hidden from the documentation in EMQX's source).
HIDDEN = frozenset({
    "listeners.*.*.enable",           # the schema's own text on `listeners`: "set the hidden `enable` field"
    "authentication.*.enable",        # every authenticator and authorization source has a hidden `enable`
    "authorization.sources.*.enable",
    "authorization.cache.enable",
    "connectors.*.*.enable",          # so has every connector and action
    "actions.*.*.enable",
})

# Deprecated keys emqx.conf still sets. It starts as what emqx.conf has today; remove an entry together with the
# key (the test fails while an entry allows a key the file no longer has).
ALLOWED_DEPRECATED: frozenset[str] = frozenset()   # emqx.conf uses no deprecated key; keep it that way

# Roots emqx.conf uses that the vendored part does not cover: the rules are checked by the stand-in's reader and
# its rule-SQL parser (tests/broker/test_config.py).
UNCHECKED_ROOTS = frozenset({"rule_engine"})


def check(conf: dict, allowed_deprecated: frozenset[str] = ALLOWED_DEPRECATED) -> Checker:
    checker = Checker(SCHEMA, allowed_deprecated=allowed_deprecated, hidden=HIDDEN, unchecked_roots=UNCHECKED_ROOTS)
    checker.check(conf)
    return checker


def parsed(text: str) -> dict:
    return _plain(ConfigFactory.parse_string(text, resolve=True))


CONF_TEXT = (ROOT / "emqx" / "emqx.conf").read_text(encoding="utf-8")


def test_the_vendored_schema_names_its_source():
    source = SCHEMA["source"]
    assert (source["repository"], source["path"]) == ("emqx/emqx-docs", "hocon/hocon-ee-v5.10.4-en.json")
    assert len(source["commit"]) == 40
    assert set(SCHEMA["roots"]) == {"node", "cluster", "dashboard", "api_key", "listeners", "mqtt", "authentication",
                                    "authorization", "connectors", "actions", "flapping_detect"}


def test_emqx_conf_follows_the_published_schema():
    checker = check(parsed(CONF_TEXT))
    assert checker.problems == []
    # every allowed deprecation is still in use: the list shrinks with the file
    assert set(checker.deprecated_seen) == set(ALLOWED_DEPRECATED)


def test_emqx_conf_with_the_compose_overrides_follows_the_published_schema():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env_example = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env_example[key] = value or "x"
    environ = service_env(compose, "emqx", env_example)
    conf = parsed(CONF_TEXT)
    applied = apply_env_overrides(conf, environ)
    assert len(applied) == len([k for k in environ if k.startswith("EMQX_")]) >= 7
    assert check(conf).problems == []


def test_emqx_conf_with_the_embedded_overrides_follows_the_published_schema(tmp_path):
    stack = Stack(StackConfig(state_dir=tmp_path, ports=Ports()), out=lambda m: None)
    for tls in (True, False):
        stack.config.tls = tls
        conf = parsed(CONF_TEXT)
        assert apply_env_overrides(conf, stack.broker_env())
        assert check(conf).problems == []


def test_the_interop_broker_configuration_is_one_emqx_would_accept():
    text = (ROOT / "tests" / "interop" / "emqx-interop.conf").read_text(encoding="utf-8")
    checker = check(parsed(text), allowed_deprecated=frozenset())
    assert checker.problems == [] and checker.deprecated_seen == []


def test_a_deprecated_key_fails_unless_allowed():
    key = "actions.http.registration.parameters.request_timeout"
    text = CONF_TEXT.replace('path = "/mqtt/register"', 'path = "/mqtt/register"\n    request_timeout = "10s"', 1)
    assert text != CONF_TEXT
    assert check(parsed(text), allowed_deprecated=frozenset()).problems == [f"{key}: deprecated in EMQX 5.10"]
    allowed = check(parsed(text), allowed_deprecated=frozenset({key}))
    assert allowed.problems == [] and allowed.deprecated_seen == [key]


@pytest.mark.parametrize("old, new, problem", [
    # misspelled keys
    ("max_inflight = 32", "max_infligth = 32", "mqtt.max_infligth: unknown key"),
    ("batch_size = 100\n    batch_time = \"10ms\"", "batch_sise = 100\n    batch_time = \"10ms\"",
     "actions.pgsql.telemetry_ingest.resource_opts.batch_sise: unknown key"),
    ("rule_engine {", "rule_engin {", "rule_engin: not a root the vendored schema covers"),
    ("connectors.pgsql.fleet_db {", "connectors.postgres.fleet_db {",
     "connectors.postgres: not a connector type the vendored schema covers"),
    # wrong enums
    ("  no_match = deny\n", "  no_match = maybe\n", "authorization.no_match: 'maybe' is not a valid Enum(allow,deny)"),
    ("verify = verify_none", "verify = verify_all",
     "listeners.ssl.default.ssl_options.verify: 'verify_all' is not a valid Enum(verify_peer,verify_none)"),
    ("discovery_strategy = manual", "discovery_strategy = gossip",
     "cluster.discovery_strategy: 'gossip' is not a valid Enum(manual,static,singleton,dns,etcd,k8s)"),
    # wrong types and ranges
    ('max_packet_size = "1MB"', 'max_packet_size = "1 megabyte"',
     "mqtt.max_packet_size: '1 megabyte' is not a valid Bytesize"),
    ('session_expiry_interval = "2h"', 'session_expiry_interval = "two hours"',
     "mqtt.session_expiry_interval: 'two hours' is not a valid Duration"),
    ("max_mqueue_len = 1000", 'max_mqueue_len = "lots"',
     "mqtt.max_mqueue_len: 'lots' is not a valid OneOf(Integer(0..+inf),String(\"infinity\"))"),
    ("max_inflight = 32", "max_inflight = 0", "mqtt.max_inflight: 0 is not a valid Integer(1..65535)"),
    ('connect_timeout = "5s"\n    pool_size = 8', 'connect_timeout = "5s"\n    pool_size = yes',
     "authentication.1.pool_size: 'yes' is not a valid Integer(1..+inf)"),
    ('versions = ["tlsv1.3", "tlsv1.2"]', 'versions = "tlsv1.3"',
     "listeners.ssl.default.ssl_options.versions: expected an array, got 'tlsv1.3'"),
    ("ssl { enable = false }", "ssl { enable = no }",
     "connectors.pgsql.fleet_db.ssl.enable: 'no' is not a valid Boolean"),
    ('request_ttl = "60s"', 'request_ttl = "1 minute"',
     "actions.http.registration.resource_opts.request_ttl: '1 minute' is not a valid "
     "OneOf(Duration,String(\"infinity\"))"),
    # a union member the constant fields do not select
    ("backend = http", "backend = https",
     "authentication.1: matches none of the vendored members (http_post)"),
])
def test_a_schema_error_in_a_copy_of_emqx_conf_is_found(old, new, problem):
    assert old in CONF_TEXT
    checker = check(parsed(CONF_TEXT.replace(old, new, 1)))
    assert [p for p in checker.problems if problem in p] and len(checker.problems) == 1, checker.problems


def test_a_hidden_field_is_accepted_only_where_emqx_has_it():
    assert check(parsed(CONF_TEXT.replace("max_connections = 100000\n  ssl_options",
                                          "enable = true\n  max_connections = 100000\n  ssl_options"))).problems == []
    problems = check(parsed(CONF_TEXT.replace("max_inflight = 32", "max_inflight = 32\n  enable = true"))).problems
    assert problems == ["mqtt.enable: unknown key"]


def test_type_strings_parse_as_the_schema_nests_them():
    assert parse_type('Map($name->OneOf(Struct(mqtt_tcp_listener),String("marked_for_deletion")))') == \
        ("Map", [("OneOf", [("Struct", [("mqtt_tcp_listener", [])]), ("String", ['"marked_for_deletion"'])])])
    assert parse_type("Integer(1..+inf)") == ("Integer", ["1..+inf"])


def test_the_extract_keeps_names_types_and_deprecation_only():
    """extract_emqx_schema.py on a miniature document of the published form."""
    doc = {"fields": [
        {"text": "mqtt", "type": "Struct(mqtt)", "doc": "Global MQTT configuration.", "refs": [
            {"text": "mqtt", "fields": [
                {"text": "max_inflight", "type": "Integer(1..65535)", "doc": "Maximum number of QoS 1 and 2."},
                {"text": "old_knob", "type": "Duration", "doc": "Deprecated since 5.0.4.<br/>A duration."}]}]},
        {"text": "log", "type": "Struct(log)", "refs": []}]}
    for name in ("node", "cluster", "dashboard", "api_key", "listeners", "authentication", "authorization",
                 "flapping_detect"):
        doc["fields"].append({"text": name, "type": f"Struct({name})"})
    for name in ("connectors", "actions"):
        doc["fields"].append({"text": name, "type": f"Struct({name})", "refs": [{"text": name, "fields": [
            {"text": "pgsql", "type": "Map($name->Struct(x))"}, {"text": "http", "type": "Map($name->Struct(y))"},
            {"text": "kafka", "type": "Map($name->Struct(z))"}]}]})
    roots = extract(doc)
    assert roots["mqtt"] == {"type": "Struct(mqtt)", "refs": {"mqtt": {
        "max_inflight": {"type": "Integer(1..65535)"}, "old_knob": {"type": "Duration", "deprecated": True}}}}
    assert "log" not in roots and set(roots["actions"]["members"]) == {"pgsql", "http"}
