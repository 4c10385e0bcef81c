"""Rule SQL subset: parsing, field selection, EMQX column semantics and WHERE evaluation (no broker, no DB)."""
from __future__ import annotations

import base64
import json

import pytest

from emqx.standin.rules.sql import RuleSqlError, parse_rule_sql


def publish_env(payload: bytes = b'{"speed": 12.5, "pos": {"lat": 1}}', **extra):
    env = {"id": "0005F1", "clientid": "veh-1", "username": "veh-1", "payload": payload, "peerhost": "127.0.0.1",
           "topic": "fleet/v1/veh-1/telemetry", "qos": 1, "flags": {"retain": False}, "publish_received_at": 1700,
           "timestamp": 1701, "node": "emqx@127.0.0.1", "client_attrs": {"role": "vehicle"},
           "event": "message.publish"}
    env.update(extra)
    return env


def test_production_telemetry_rule():
    rule = parse_rule_sql('SELECT clientid, topic, base64_encode(payload) AS payload_b64, publish_received_at '
                          'FROM "fleet/v1/+/telemetry" ')
    assert rule.topic_filters == ["fleet/v1/+/telemetry"] and rule.events == []
    out = rule.select(publish_env(b"\xff\x00raw"))
    assert out == {"clientid": "veh-1", "topic": "fleet/v1/veh-1/telemetry",
                   "payload_b64": base64.b64encode(b"\xff\x00raw").decode(), "publish_received_at": 1700}


def test_star_dotted_paths_and_json_payload():
    rule = parse_rule_sql('select *, payload.speed as speed, client_attrs.role AS role '
                          'FROM "a/#", "b/+"')
    assert rule.topics == ["a/#", "b/+"]
    out = rule.select(publish_env())
    assert out["speed"] == 12.5 and out["role"] == "vehicle"
    assert out["clientid"] == "veh-1" and out["qos"] == 1 and out["payload"] == publish_env()["payload"]
    nested = parse_rule_sql('SELECT payload.pos.lat, client_attrs.role FROM "a/#"').select(publish_env())
    assert nested == {"payload": {"pos": {"lat": 1}}, "client_attrs": {"role": "vehicle"}}   # as EMQX nests them
    assert rule.select(publish_env(b"not json"))["speed"] is None


def test_functions_and_arithmetic():
    rule = parse_rule_sql("SELECT nth(3, split(topic, '/')) AS vid, int(payload.speed) * 2 AS dbl, "
                          "float('2.5') + 1 AS f, lower('AB') AS l, concat(clientid, '-x') AS c, "
                          "coalesce(payload.nope, 'dflt') AS d, json_encode(payload.pos) AS j, "
                          "is_null(payload.nope) AS n FROM \"fleet/#\"")
    out = rule.select(publish_env())
    assert out == {"vid": "veh-1", "dbl": 24, "f": 3.5, "l": "ab", "c": "veh-1-x", "d": "dflt",
                   "j": json.dumps({"lat": 1}, separators=(",", ":")), "n": True}


def test_function_error_raises_for_failed_exception_metric():
    rule = parse_rule_sql('SELECT float(payload.name) AS f FROM "t"')
    with pytest.raises(ValueError):
        rule.select(publish_env(b'{"name": "abc"}'))


DISCONNECTED = ('SELECT clientid, event, reason, disconnected_at AS at_ms, connected_at, client_attrs.role AS role '
                'FROM "$events/client_disconnected" WHERE reason != \'takenover\' and reason != \'discarded\' ')


@pytest.mark.parametrize("reason, selected", [("normal", True), ("keepalive_timeout", True), ("kicked", True),
                                              ("takenover", False), ("discarded", False)])
def test_where_filters_takeover_disconnects(reason, selected):
    rule = parse_rule_sql(DISCONNECTED)
    assert rule.events == ["client.disconnected"]
    env = {"clientid": "veh-1", "event": "client.disconnected", "reason": reason, "disconnected_at": 5,
           "connected_at": 3, "client_attrs": {"role": "vehicle"}}
    out = rule.select(env)
    if selected:
        assert out == {"clientid": "veh-1", "event": "client.disconnected", "reason": reason, "at_ms": 5,
                       "connected_at": 3, "role": "vehicle"}
    else:
        assert out is None


@pytest.mark.parametrize("where, expected", [
    ("qos = 1", True), ("qos = '1'", True), ("qos > 0 and qos < 2", True), ("qos >= 2 or qos <= 0", False),
    ("not (qos = 1)", False), ("qos <> 1", False), ("payload.speed > 10", True), ("payload.speed > '9'", True),
    ("client_attrs.role = 'vehicle' and (topic = 'x' or clientid = 'veh-1')", True), ("flags.retain = false", True),
    ("payload.missing = 'x'", False), ("username != clientid", False),
])
def test_where_expressions(where, expected):
    rule = parse_rule_sql(f'SELECT clientid FROM "#" WHERE {where}')
    assert (rule.select(publish_env()) is not None) is expected


def test_events_and_authz_rule():
    rule = parse_rule_sql('SELECT clientid, topic, action, timestamp FROM "$events/client_check_authz_complete" '
                          "WHERE result = 'deny'")
    assert rule.events == ["client.check_authz_complete"]
    env = {"clientid": "v", "topic": "t", "action": "publish", "result": "deny", "timestamp": 9}
    assert rule.select(env) == {"clientid": "v", "topic": "t", "action": "publish", "timestamp": 9}
    assert rule.select({**env, "result": "allow"}) is None


@pytest.mark.parametrize("sql, message", [
    ('SELECT * FROM t', "double-quoted topic"),
    ('SELECT * "t"', "expected 'from'"),
    ('SELECT a FROM "t" WHERE', "unexpected"),
    ('SELECT CASE WHEN a THEN 1 END FROM "t"', "CASE is not supported"),
    ('SELECT a FROM "t" WHERE a IN (1, 2)', "IN is not supported"),
    ('SELECT md5(a) FROM "t"', r"md5\(\) is not supported"),
    ('SELECT a FROM "t" extra', "unexpected 'extra'"),
    ('SELECT a ! b FROM "t"', "unexpected character"),
])
def test_parse_errors_name_the_construct(sql, message):
    with pytest.raises(RuleSqlError, match=message):
        parse_rule_sql(sql)
