"""POST /mqtt/authn — every contract case of EMQX's HTTP authentication, as the broker calls it."""
from __future__ import annotations

import json
import uuid

import pytest

from fleetcore import registry, topics

ALLOW_KEYS = {"result", "is_superuser", "client_attrs", "acl"}


def test_active_vehicle_with_its_secret_is_allowed_with_role_fleet_and_its_topics(broker, active_vehicle):
    vehicle = active_vehicle()
    answer = broker.authn_result(vehicle.id, vehicle.secret)
    own = f"fleet/v1/{vehicle.id}"
    assert answer == {"result": "allow", "is_superuser": False,
                      "client_attrs": {"role": "vehicle", "fleet": vehicle.fleet_id},
                      "acl": [{"permission": "allow", "action": "publish", "topics": [f"{own}/connection"]},
                              {"permission": "allow", "action": "publish", "retain": False,
                               "topics": [f"{own}/mission", f"{own}/status", f"{own}/telemetry"]},
                              {"permission": "allow", "action": "subscribe",
                               "topics": [f"{own}/cmd", f"{own}/register/response", "fleet/v1/_fleet/cmd"]}]}


def test_session_rules_allow_exactly_what_the_authz_callout_allows():
    from authsvc import acl
    for role in ("vehicle", "enrolling"):
        for rule in acl.session_rules(role, "veh-1"):
            for topic in rule["topics"]:
                client = acl.client_id_for(role, "veh-1")
                assert acl.decide(role, client, "veh-1", rule["action"], topic).allow, (role, rule, topic)
                if rule["action"] == "publish":
                    may_retain = rule.get("retain", "all") != False  # noqa: E712 - EMQX's field: false or absent
                    assert acl.decide(role, client, "veh-1", "publish", topic, retain=True).allow == may_retain, \
                        (role, rule, topic)


@pytest.mark.parametrize(("kind", "allowed"), [("telemetry", False), ("status", False), ("mission", False),
                                               ("connection", True)])
def test_a_vehicle_may_publish_retained_only_its_presence(kind, allowed):
    from authsvc import acl
    decision = acl.decide("vehicle", "veh-1", "veh-1", "publish", f"fleet/v1/veh-1/{kind}", retain=True)
    assert (decision.allow, decision.reason) == (allowed, "own_topic" if allowed else "retain_not_allowed")


def test_an_enrollment_token_is_refused_on_the_vehicles_own_client_id(broker, active_vehicle, stack_db,
                                                                      device_key):
    """Issue 21 #2: connecting as the vehicle with its rotation token would resume (and take over) the vehicle's
    persistent session. The token only opens the vehicle's enrollment client id, a session of its own."""
    vehicle = active_vehicle()
    with stack_db.transaction() as cur:
        fresh = registry.issue_enrollment_token(cur, device_key, vehicle.id, actor_id="tests")
    assert broker.authn_result(vehicle.id, fresh.token) == {"result": "deny"}
    assert broker.authn_enrolling(vehicle.id, fresh.token)["client_attrs"]["role"] == "enrolling"


def test_a_device_secret_is_refused_on_the_enrollment_client_id(broker, active_vehicle):
    vehicle = active_vehicle()
    assert broker.authn_enrolling(vehicle.id, vehicle.secret) == {"result": "deny"}


def test_an_enrolling_client_is_authorized_only_under_its_own_enrollment_client_id(broker, new_vehicle):
    vehicle = new_vehicle()
    request = topics.vehicle_topic(vehicle.id, topics.Kind.REGISTER_REQUEST)
    assert broker.authz("enrolling", vehicle.id, "publish", request) == "allow"
    assert broker.authz("enrolling", vehicle.id, "publish", request, clientid=vehicle.id) == "deny"
    assert broker.authz("vehicle", vehicle.id, "subscribe", topics.vehicle_topic(vehicle.id, topics.Kind.CMD),
                        clientid=topics.enrollment_client_id(vehicle.id)) == "deny"


def test_pending_vehicle_with_its_enrollment_token_is_allowed_as_enrolling(broker, new_vehicle):
    vehicle = new_vehicle()
    answer = broker.authn_enrolling(vehicle.id, vehicle.token)
    assert answer == {"result": "allow", "is_superuser": False,
                      "client_attrs": {"role": "enrolling", "fleet": vehicle.fleet_id},
                      "acl": [{"permission": "allow", "action": "publish",
                               "retain": False, "topics": [f"fleet/v1/{vehicle.id}/register/request"]},
                              {"permission": "allow", "action": "subscribe",
                               "topics": [f"fleet/v1/{vehicle.id}/register/response"]}]}


def test_active_vehicle_with_a_fresh_token_may_enroll_again(broker, active_vehicle, stack_db, device_key):
    vehicle = active_vehicle()
    with stack_db.transaction() as cur:
        fresh = registry.issue_enrollment_token(cur, device_key, vehicle.id, actor_id="tests")
    assert broker.authn_enrolling(vehicle.id, fresh.token)["client_attrs"]["role"] == "enrolling"
    assert broker.authn_result(vehicle.id, vehicle.secret)["client_attrs"]["role"] == "vehicle", \
        "the current secret keeps working until the new registration"


@pytest.mark.parametrize("case", ["wrong_secret", "other_vehicles_secret", "empty_password", "token_as_clientid",
                                  "secret_of_another_with_its_id_as_username"])
def test_wrong_credentials_are_denied(broker, active_vehicle, case):
    vehicle, other = active_vehicle(), active_vehicle()
    clientid, username, password = {
        "wrong_secret": (vehicle.id, vehicle.id, vehicle.secret[:-2] + "xx"),
        "other_vehicles_secret": (vehicle.id, vehicle.id, other.secret),
        "empty_password": (vehicle.id, vehicle.id, ""),
        "token_as_clientid": (vehicle.secret, vehicle.secret, vehicle.secret),
        "secret_of_another_with_its_id_as_username": (vehicle.id, other.id, other.secret),
    }[case]
    assert broker.authn_result(clientid, password, username) == {"result": "deny"}


def test_unknown_vehicle_is_denied(broker):
    assert broker.authn_result("no-such-vehicle-" + uuid.uuid4().hex[:8], "x" * 43) == {"result": "deny"}


def test_clientid_must_equal_username(broker, active_vehicle):
    vehicle = active_vehicle()
    assert broker.authn_result(vehicle.id + "-x", vehicle.secret, username=vehicle.id) == {"result": "deny"}
    assert broker.authn_result(vehicle.id, vehicle.secret, username=vehicle.id + "-x") == {"result": "deny"}


def test_revoked_vehicle_is_denied_with_its_old_secret(broker, active_vehicle, stack_db):
    vehicle = active_vehicle()
    with stack_db.transaction() as cur:
        registry.revoke_vehicle(cur, vehicle.id, actor_type="operator", actor_id="tests")
    assert broker.authn_result(vehicle.id, vehicle.secret) == {"result": "deny"}


def test_decommissioned_vehicle_is_denied(broker, active_vehicle, stack_db):
    vehicle = active_vehicle()
    with stack_db.transaction() as cur:
        registry.decommission_vehicle(cur, vehicle.id, actor_type="operator", actor_id="tests")
    assert broker.authn_result(vehicle.id, vehicle.secret) == {"result": "deny"}


def test_used_token_is_denied(broker, active_vehicle):
    vehicle = active_vehicle()  # its token was used to register
    assert broker.authn_enrolling(vehicle.id, vehicle.token) == {"result": "deny"}


def test_expired_token_is_denied(broker, new_vehicle, stack_db):
    vehicle = new_vehicle()
    with stack_db.transaction() as cur:
        cur.execute("UPDATE enrollment_tokens SET expires_at = now() - interval '1 second' WHERE vehicle_id = %s",
                    (vehicle.id,))
    assert broker.authn_enrolling(vehicle.id, vehicle.token) == {"result": "deny"}


def test_foreign_token_is_denied(broker, new_vehicle):
    vehicle, other = new_vehicle(), new_vehicle()
    assert broker.authn_enrolling(vehicle.id, other.token) == {"result": "deny"}


def test_superseded_token_is_denied(broker, new_vehicle, stack_db, device_key):
    vehicle = new_vehicle()
    with stack_db.transaction() as cur:
        fresh = registry.issue_enrollment_token(cur, device_key, vehicle.id, actor_id="tests")
    assert broker.authn_enrolling(vehicle.id, vehicle.token) == {"result": "deny"}
    assert broker.authn_enrolling(vehicle.id, fresh.token)["result"] == "allow"


def test_tokens_issued_before_a_revocation_are_withdrawn_but_a_new_one_readmits(broker, new_vehicle, stack_db,
                                                                                  device_key):
    vehicle = new_vehicle()
    with stack_db.transaction() as cur:
        registry.revoke_vehicle(cur, vehicle.id, actor_type="operator", actor_id="tests")
    assert broker.authn_enrolling(vehicle.id, vehicle.token) == {"result": "deny"}
    with stack_db.transaction() as cur:
        fresh = registry.issue_enrollment_token(cur, device_key, vehicle.id, actor_id="tests", readmit=True)
    assert broker.authn_enrolling(vehicle.id, fresh.token)["client_attrs"]["role"] == "enrolling"


@pytest.mark.parametrize("body", [
    {"username": "veh-1", "password": "x"},                                     # no clientid
    {"clientid": "veh-1", "password": "x"},                                     # no username
    {"clientid": "veh-1", "username": "veh-1"},                                 # no password
    {"clientid": 1, "username": "veh-1", "password": "x"},                      # not a string
    {"clientid": "veh-1", "username": "veh-1", "password": None},
    ["veh-1", "veh-1", "x"],                                                    # not an object
])
def test_bodies_breaking_the_contract_are_denied_not_errors(broker, body):
    response = broker.post("/mqtt/authn", body)
    assert response.status_code == 200
    assert response.json() == {"result": "deny"}


def test_extra_fields_are_ignored(broker, active_vehicle):
    vehicle = active_vehicle()
    response = broker.post("/mqtt/authn", {"clientid": vehicle.id, "username": vehicle.id, "password": vehicle.secret,
                                           "peerhost": "10.0.0.7", "proto_name": "MQTT", "is_superuser": "true"})
    assert response.json()["result"] == "allow" and response.json()["is_superuser"] is False


def test_malformed_json_and_oversized_bodies_are_denied(broker, active_vehicle):
    vehicle = active_vehicle()
    for data in (b"{not json", b"", b"\xff\xfe"):
        response = broker.post("/mqtt/authn", data=data, headers={"Content-Type": "application/json"})
        assert (response.status_code, response.json()) == (200, {"result": "deny"}), data
    huge = json.dumps({"clientid": vehicle.id, "username": vehicle.id, "password": vehicle.secret,
                       "pad": "x" * 100_000}).encode()
    response = broker.post("/mqtt/authn", data=huge, headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()) == (200, {"result": "deny"})


def test_decisions_are_logged_with_reason_and_never_the_password(broker, active_vehicle, stack):
    vehicle = active_vehicle()
    wrong = "wrong-" + uuid.uuid4().hex
    broker.authn_result(vehicle.id, wrong)
    broker.authn_result(vehicle.id, vehicle.secret)
    log_path = stack.log_dir / "authsvc.log"

    def logged():
        text = log_path.read_text(encoding="utf-8")
        return f"vehicle={vehicle.id} role=vehicle" in text and f"vehicle={vehicle.id} username" in text and text
    from tests.support.waiting import wait_until
    text = wait_until(logged, message="authn decisions not in the authsvc log")
    assert "reason=bad_password" in text
    assert wrong not in text and vehicle.secret not in text and vehicle.token not in text
