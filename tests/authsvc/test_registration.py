"""POST /mqtt/register — registration requests as the broker's HTTP action forwards them.

These run with or without the broker. Without it the answer cannot be published, so authsvc must say so with a
5xx (the broker retries) *after* deciding; the tests check the decision in the HTTP answer and in the database,
and compute the issued secret the way authsvc derives it to prove it works (with a broker, tests/
test_registration_e2e.py receives it over MQTT).
"""
from __future__ import annotations

import base64
import threading
import uuid

import pytest

from fleetcore import registry
from tests.authsvc.conftest import audit_actions, credential_rows, expected_secret, registration_summary, vehicle_row


def test_registration_issues_a_secret_that_authenticates(broker, broker_running, new_vehicle, stack_db, device_key):
    vehicle = new_vehicle()
    msg_id = str(uuid.uuid4())
    summary = registration_summary(broker.register(vehicle.id, vehicle.token, msg_id, model="rover-2",
                                                   sw_version="3.1.4"), broker_running)
    assert summary["result"] == "accepted" and summary["vehicle_id"] == vehicle.id
    assert summary["request_msg_id"] == msg_id and summary["rotated"] is False
    row = vehicle_row(stack_db, vehicle.id)
    assert row["status"] == "active" and row["registered_at"] is not None
    assert row["model"] == "rover-2" and row["metadata"]["sw_version"] == "3.1.4"
    [credential] = credential_rows(stack_db, vehicle.id)
    assert credential["revoked_at"] is None
    secret = expected_secret(device_key, vehicle.id, msg_id, vehicle.token)
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32, "256-bit secret"
    assert bytes(credential["secret_hash"]) != secret.encode(), "only a hash is stored"
    answer = broker.authn_result(vehicle.id, secret)
    assert answer["result"] == "allow" and answer["client_attrs"]["role"] == "vehicle"
    assert broker.authn_result(vehicle.id, vehicle.token) == {"result": "deny"}, "the token is used up"
    assert "vehicle.register" in audit_actions(stack_db, vehicle.id)


def test_the_http_answer_never_contains_the_secret(broker, broker_running, new_vehicle, device_key):
    vehicle = new_vehicle()
    msg_id = str(uuid.uuid4())
    response = broker.register(vehicle.id, vehicle.token, msg_id)
    assert expected_secret(device_key, vehicle.id, msg_id, vehicle.token) not in response.text


def test_a_retry_of_the_same_request_gets_the_same_secret(broker, broker_running, new_vehicle, stack_db, device_key):
    vehicle = new_vehicle()
    msg_id = str(uuid.uuid4())
    first = registration_summary(broker.register(vehicle.id, vehicle.token, msg_id), broker_running)
    again = registration_summary(broker.register(vehicle.id, vehicle.token, msg_id), broker_running)
    assert first["result"] == again["result"] == "accepted"
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert len(credential_rows(stack_db, vehicle.id)) == 1, "no second secret"
    assert broker.authn_result(vehicle.id, expected_secret(device_key, vehicle.id, msg_id, vehicle.token))[
        "result"] == "allow"


def test_another_request_with_a_used_token_is_rejected(broker, broker_running, new_vehicle, stack_db):
    vehicle = new_vehicle()
    registration_summary(broker.register(vehicle.id, vehicle.token), broker_running)
    second = registration_summary(broker.register(vehicle.id, vehicle.token), broker_running)
    assert (second["result"], second["reason"]) == ("rejected", "token_used")
    assert len(credential_rows(stack_db, vehicle.id)) == 1
    assert "vehicle.register_rejected" in audit_actions(stack_db, vehicle.id)


def test_concurrent_registrations_with_one_token_issue_exactly_one_secret(broker, broker_running, new_vehicle,
                                                                         stack_db, device_key):
    vehicle = new_vehicle()
    msg_ids = [str(uuid.uuid4()) for _ in range(8)]
    results: dict[str, dict] = {}
    barrier = threading.Barrier(len(msg_ids))

    def attempt(msg_id: str) -> None:
        barrier.wait()
        results[msg_id] = registration_summary(broker.register(vehicle.id, vehicle.token, msg_id), broker_running)

    threads = [threading.Thread(target=attempt, args=(m,)) for m in msg_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = [m for m, r in results.items() if r["result"] == "accepted"]
    assert len(results) == len(msg_ids) and len(winners) == 1, results
    assert {r["reason"] for m, r in results.items() if m not in winners} == {"token_used"}
    [credential] = credential_rows(stack_db, vehicle.id)
    assert credential["revoked_at"] is None
    winner_secret = expected_secret(device_key, vehicle.id, winners[0], vehicle.token)
    assert broker.authn_result(vehicle.id, winner_secret)["result"] == "allow"
    for loser in set(msg_ids) - set(winners):
        assert broker.authn_result(vehicle.id, expected_secret(device_key, vehicle.id, loser, vehicle.token)) == \
            {"result": "deny"}


def test_reregistration_with_a_fresh_token_rotates_the_secret(broker, broker_running, active_vehicle, stack_db,
                                                              device_key):
    vehicle = active_vehicle()
    with stack_db.transaction() as cur:
        fresh = registry.issue_enrollment_token(cur, device_key, vehicle.id, actor_id="tests")
    msg_id = str(uuid.uuid4())
    summary = registration_summary(broker.register(vehicle.id, fresh.token, msg_id), broker_running)
    assert summary["result"] == "accepted" and summary["rotated"] is True
    assert broker.authn_result(vehicle.id, vehicle.secret) == {"result": "deny"}, "the old secret stopped working"
    new_secret = expected_secret(device_key, vehicle.id, msg_id, fresh.token)
    assert broker.authn_result(vehicle.id, new_secret)["client_attrs"]["role"] == "vehicle"
    old, new = credential_rows(stack_db, vehicle.id)
    assert old["revoked_reason"] == "rotated" and new["revoked_at"] is None


def test_a_replay_after_rotation_is_token_used(broker, broker_running, active_vehicle, stack_db, device_key):
    vehicle = active_vehicle()
    msg_id = str(uuid.uuid4())
    with stack_db.transaction() as cur:
        first = registry.issue_enrollment_token(cur, device_key, vehicle.id, actor_id="tests")
    registration_summary(broker.register(vehicle.id, first.token, msg_id), broker_running)
    with stack_db.transaction() as cur:
        second = registry.issue_enrollment_token(cur, device_key, vehicle.id, actor_id="tests")
    registration_summary(broker.register(vehicle.id, second.token), broker_running)
    replay = registration_summary(broker.register(vehicle.id, first.token, msg_id), broker_running)
    assert (replay["result"], replay["reason"]) == ("rejected", "token_used")


@pytest.mark.parametrize("case,reason", [
    ("foreign_token", "token_invalid"), ("unknown_token", "token_invalid"), ("expired", "token_expired"),
    ("revoked", "vehicle_revoked"), ("decommissioned", "vehicle_decommissioned"),
])
def test_rejections(broker, broker_running, new_vehicle, stack_db, case, reason):
    vehicle, other = new_vehicle(), new_vehicle()
    token = {"foreign_token": other.token, "unknown_token": "enr_" + "A" * 43}.get(case, vehicle.token)
    with stack_db.transaction() as cur:
        if case == "expired":
            cur.execute("UPDATE enrollment_tokens SET expires_at = now() - interval '1 s' WHERE vehicle_id = %s",
                        (vehicle.id,))
        elif case == "revoked":
            registry.revoke_vehicle(cur, vehicle.id, actor_type="operator", actor_id="tests")
        elif case == "decommissioned":
            registry.decommission_vehicle(cur, vehicle.id, actor_type="operator", actor_id="tests")
    summary = registration_summary(broker.register(vehicle.id, token), broker_running)
    assert (summary["result"], summary["reason"]) == ("rejected", reason)
    assert credential_rows(stack_db, vehicle.id) == []
    assert vehicle_row(stack_db, other.id)["status"] == "pending", "a foreign token is not consumed"


@pytest.mark.parametrize("payload", [
    b"not json", b"[]", b'{"v":1,"data":{"enrollment_token":"enr_x"}}',                   # no msg_id
    b'{"v":2,"msg_id":"m1","ts":1,"data":{"enrollment_token":"enr_x"}}',                  # unknown version
    b'{"v":1,"msg_id":"m1","ts":1,"data":{}}',                                            # no token
    b'{"v":1,"msg_id":"m1","ts":1,"data":{"enrollment_token":"enr_x","model":7}}',
    b'{"v":1,"msg_id":"m1","ts":1,"data":{"enrollment_token":"enr_x","model":"a\\u0000b"}}',   # NUL
    b'{"v":1,"msg_id":"m\\u0000","ts":1,"data":{"enrollment_token":"enr_x"}}',
])
def test_malformed_requests_are_answered_rejected_malformed(broker, broker_running, new_vehicle, stack_db, payload):
    vehicle = new_vehicle()
    summary = registration_summary(broker.register(vehicle.id, vehicle.token, payload=payload), broker_running)
    assert (summary["result"], summary["reason"]) == ("rejected", "malformed")
    assert vehicle_row(stack_db, vehicle.id)["status"] == "pending"


def test_a_request_on_another_vehicles_topic_is_rejected_and_answered_to_the_sender(broker, broker_running,
                                                                                     new_vehicle, stack_db):
    vehicle, other = new_vehicle(), new_vehicle()
    summary = registration_summary(broker.register(other.id, other.token, sender=vehicle.id), broker_running)
    assert (summary["vehicle_id"], summary["reason"]) == (vehicle.id, "malformed")
    assert vehicle_row(stack_db, other.id)["status"] == "pending"


@pytest.mark.parametrize("body", [
    {"username": "veh-1", "topic": "fleet/v1/veh-1/register/request", "payload_b64": "e30="},        # no clientid
    {"clientid": "_bad/id", "topic": "fleet/v1/veh-1/register/request", "payload_b64": "e30="},
    {"clientid": "_enroll-veh-1", "username": "veh-1", "topic": "fleet/v1/veh-1/register/request"},  # no payload
    # the vehicle's own client id: authn never admits a token holder there, so this is not a rule output
    {"clientid": "veh-1", "username": "veh-1", "topic": "fleet/v1/veh-1/register/request", "payload_b64": "e30="},
    {"clientid": "_enroll-veh-2", "username": "veh-1", "topic": "fleet/v1/veh-1/register/request",
     "payload_b64": "e30="},
    "just a string",
])
def test_calls_that_are_not_a_rule_output_are_400(broker, body):
    response = broker.post("/mqtt/register", body)
    assert response.status_code == 400 and response.json()["code"] == "bad_request"


def test_an_oversized_call_is_413(broker):
    response = broker.post("/mqtt/register", data=b"{" + b" " * 300_000 + b"}",
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"
