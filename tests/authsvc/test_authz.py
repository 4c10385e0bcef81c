"""POST /mqtt/authz — the ACL of docs/PROTOCOL.md (Topic tree) over HTTP: every topic kind, both roles, and every
way to stray."""
from __future__ import annotations

import pytest

V = "veh-acl-1"
OTHER = "veh-acl-2"
OWN = f"fleet/v1/{V}"

# (role, action, topic) → expected; the full matrix of the vehicle's own topic kinds for both roles.
OWN_TOPICS = {
    # topic kind:          vehicle publish, vehicle subscribe, enrolling publish, enrolling subscribe
    "telemetry":           ("allow", "deny", "deny", "deny"),
    "status":              ("allow", "deny", "deny", "deny"),
    "mission":             ("allow", "deny", "deny", "deny"),
    "connection":          ("allow", "deny", "deny", "deny"),
    "cmd":                 ("deny", "allow", "deny", "deny"),
    "register/request":    ("deny", "deny", "allow", "deny"),
    "register/response":   ("deny", "allow", "deny", "allow"),
}
COLUMNS = [("vehicle", "publish"), ("vehicle", "subscribe"), ("enrolling", "publish"), ("enrolling", "subscribe")]


@pytest.mark.parametrize("kind", list(OWN_TOPICS))
def test_own_topics_matrix(broker, kind):
    for (role, action), expected in zip(COLUMNS, OWN_TOPICS[kind], strict=True):
        assert broker.authz(role, V, action, f"{OWN}/{kind}") == expected, (role, action, kind)


def test_fleet_wide_commands_only_for_subscribing_vehicles(broker):
    assert broker.authz("vehicle", V, "subscribe", "fleet/v1/_fleet/cmd") == "allow"
    assert broker.authz("vehicle", V, "publish", "fleet/v1/_fleet/cmd") == "deny"
    assert broker.authz("enrolling", V, "subscribe", "fleet/v1/_fleet/cmd") == "deny"
    assert broker.authz("vehicle", V, "subscribe", "fleet/v1/_fleet/telemetry") == "deny"


@pytest.mark.parametrize("role", ["vehicle", "enrolling"])
@pytest.mark.parametrize("kind", list(OWN_TOPICS))
def test_other_vehicles_topics_are_denied(broker, role, kind):
    for action in ("publish", "subscribe"):
        assert broker.authz(role, V, action, f"fleet/v1/{OTHER}/{kind}") == "deny", (role, action, kind)


@pytest.mark.parametrize("topic", [
    "#", "+", "fleet/#", "fleet/v1/#", "fleet/v1/+/telemetry", f"{OWN}/#", f"{OWN}/+", "fleet/v1/+/cmd",
    "fleet/v1/_fleet/#", f"fleet/v1/{V}/+/response",
])
def test_wildcards_are_denied(broker, topic):
    for role in ("vehicle", "enrolling"):
        for action in ("subscribe", "publish"):
            assert broker.authz(role, V, action, topic) == "deny", (role, action, topic)


@pytest.mark.parametrize("topic", ["$SYS/#", "$SYS/brokers", f"$share/g/{OWN}/cmd", f"$queue/{OWN}/cmd",
                                   f"$SYS/{OWN}/cmd"])
def test_system_and_shared_topics_are_denied(broker, topic):
    assert broker.authz("vehicle", V, "subscribe", topic) == "deny"


@pytest.mark.parametrize("topic", ["fleet/v2/veh-acl-1/telemetry", "vehicles/veh-acl-1/telemetry", f"{OWN}",
                                   f"{OWN}/telemetry/extra", f"{OWN}/", "fleet/v1/_veh/telemetry", "",
                                   f"/{OWN}/telemetry", f"{OWN}/register"])
def test_topics_outside_the_tree_are_denied(broker, topic):
    assert broker.authz("vehicle", V, "publish", topic) == "deny"


@pytest.mark.parametrize("role", ["", "admin", "VEHICLE", "${client_attrs.role}", "superuser"])
def test_empty_or_unknown_role_is_denied(broker, role):
    assert broker.authz(role, V, "publish", f"{OWN}/telemetry") == "deny"


def test_missing_role_is_denied(broker):
    response = broker.post("/mqtt/authz", {"clientid": V, "username": V, "topic": f"{OWN}/telemetry",
                                           "action": "publish", "qos": "0", "retain": "false"})
    assert response.json() == {"result": "deny"}


def test_identity_mismatch_is_denied(broker):
    assert broker.authz("vehicle", OTHER, "publish", f"{OWN}/telemetry", clientid=V) == "deny"
    assert broker.authz("vehicle", V, "publish", f"{OWN}/telemetry", clientid=OTHER) == "deny"


def test_unknown_action_is_denied(broker):
    assert broker.authz("vehicle", V, "all", f"{OWN}/telemetry") == "deny"


@pytest.mark.parametrize("body", [
    {"clientid": V, "username": V, "action": "publish", "role": "vehicle"},                   # no topic
    {"clientid": V, "username": V, "topic": f"{OWN}/telemetry", "role": "vehicle"},           # no action
    {"clientid": V, "username": V, "topic": f"{OWN}/telemetry", "action": "publish", "role": ["vehicle"]},
    {"clientid": V, "username": V, "topic": 7, "action": "publish", "role": "vehicle"},
])
def test_bodies_breaking_the_contract_are_denied(broker, body):
    response = broker.post("/mqtt/authz", body)
    assert (response.status_code, response.json()) == (200, {"result": "deny"})


def test_extra_fields_do_not_change_the_decision(broker):
    response = broker.post("/mqtt/authz", {"clientid": V, "username": V, "topic": f"{OWN}/telemetry",
                                           "action": "publish", "qos": "1", "retain": "false", "role": "vehicle",
                                           "peerhost": "10.1.2.3", "is_superuser": "true"})
    assert response.json() == {"result": "allow"}


def test_malformed_and_oversized_bodies_are_denied(broker):
    for data in (b"{", b"null", b"[]"):
        response = broker.post("/mqtt/authz", data=data, headers={"Content-Type": "application/json"})
        assert (response.status_code, response.json()) == (200, {"result": "deny"})
    huge = b'{"clientid":"%s","username":"%s","topic":"%s/telemetry","action":"publish","role":"vehicle","x":"%s"}' % (
        V.encode(), V.encode(), OWN.encode(), b"y" * 100_000)
    response = broker.post("/mqtt/authz", data=huge, headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()) == (200, {"result": "deny"})
