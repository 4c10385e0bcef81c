"""Registration end to end over real MQTT: an operator creates a vehicle, a paho vehicle enrolls with the token,
receives its device secret on register/response, reconnects with it and publishes; rotation and revocation.

Needs the whole stack: FLEET_STACK_COMPONENTS=authsvc,broker,api.
"""
from __future__ import annotations

import uuid

import pytest

from fleetcore import topics
from tests.support.database import rows
from tests.support.operators import unique
from tests.support.required import require_components, require_tool
from tests.support.vehicle import ConnectRefused, MqttVehicle
from tests.support.waiting import wait_until


@pytest.fixture(autouse=True)
def _needs_the_whole_stack(stack):
    require_components(stack, "authsvc", "broker", "api")


def new_vehicle(operator, stack) -> tuple[MqttVehicle, str]:
    vehicle_id = unique("veh")
    response = operator.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": operator.fleet})
    assert response.status_code == 201, response.text
    return MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle_id), response.json()["enrollment"]["token"]


def request_registration(vehicle: MqttVehicle, token: str, msg_id: str | None = None) -> dict:
    """On an open enrolling connection: publish a request and return the answer envelope."""
    request = vehicle.publish(topics.Kind.REGISTER_REQUEST, {"enrollment_token": token, "model": "e2e"},
                              msg_id=msg_id)
    answer = vehicle.wait_for_message(lambda m: m.topic.endswith("/register/response"), timeout=15).json()
    assert answer["data"]["request_msg_id"] == request["msg_id"]
    return answer


def test_enroll_receive_secret_reconnect_and_publish(operator, stack):
    vehicle, token = new_vehicle(operator, stack)
    vehicle.connect_enrolling(token)
    try:
        assert vehicle.subscribe(topics.vehicle_topic(vehicle.vehicle_id, topics.Kind.REGISTER_RESPONSE)) == [1]
        answer = request_registration(vehicle, token)
    finally:
        vehicle.close()
    assert answer["type"] == "register.accepted" and answer["v"] == 1
    data = answer["data"]
    assert (data["vehicle_id"], data["fleet_id"], data["username"]) == (vehicle.vehicle_id, operator.fleet,
                                                                       vehicle.vehicle_id)
    assert len(data["password"]) >= 43

    vehicle.connect(data["password"])
    try:
        vehicle.subscribe_commands()
        vehicle.telemetry(lat=48.2, lon=11.6, speed_mps=2.5)
        shown = wait_until(lambda: (v := operator.get(f"/api/v1/vehicles/{vehicle.vehicle_id}").json())
                           ["telemetry"]["lat"] == 48.2 and v, message="telemetry never arrived")
        assert shown["status"] == "active" and shown["model"] == "e2e"
    finally:
        vehicle.close()
    with pytest.raises(ConnectRefused):
        MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle.vehicle_id).connect_enrolling(token)


def test_the_same_request_twice_gets_the_same_answer(operator, stack):
    vehicle, token = new_vehicle(operator, stack)
    vehicle.connect_enrolling(token)
    try:
        vehicle.subscribe(topics.vehicle_topic(vehicle.vehicle_id, topics.Kind.REGISTER_RESPONSE))
        msg_id = str(uuid.uuid4())
        first = request_registration(vehicle, token, msg_id)
        again = request_registration(vehicle, token, msg_id)
        other = request_registration(vehicle, token)
    finally:
        vehicle.close()
    assert first["type"] == again["type"] == "register.accepted"
    assert (first["msg_id"], first["data"]["password"]) == (again["msg_id"], again["data"]["password"])
    assert (other["type"], other["data"]["reason"]) == ("register.rejected", "token_used")


def test_a_wrong_token_in_the_request_is_rejected_with_a_reason(operator, stack):
    vehicle, token = new_vehicle(operator, stack)
    _, foreign = new_vehicle(operator, stack)
    vehicle.connect_enrolling(token)
    try:
        vehicle.subscribe(topics.vehicle_topic(vehicle.vehicle_id, topics.Kind.REGISTER_RESPONSE))
        answer = request_registration(vehicle, foreign)
        vehicle.publish_raw(topics.vehicle_topic(vehicle.vehicle_id, topics.Kind.REGISTER_REQUEST), b"{oops")
        malformed = vehicle.wait_for_message(lambda m: m.topic.endswith("/register/response"), timeout=15).json()
    finally:
        vehicle.close()
    assert (answer["type"], answer["data"]["reason"]) == ("register.rejected", "token_invalid")
    assert answer["data"]["message"]
    assert (malformed["data"]["reason"], malformed["data"]["request_msg_id"]) == ("malformed", None)
    assert operator.get(f"/api/v1/vehicles/{vehicle.vehicle_id}").json()["status"] == "pending"


def test_reregistration_rotates_the_secret_over_mqtt(operator, stack):
    vehicle, token = new_vehicle(operator, stack)
    old_secret = vehicle.register(token)
    vehicle.connect(old_secret)
    vehicle.subscribe_commands()
    fresh = operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/enrollment").json()["token"]
    enrolling = MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle.vehicle_id)
    new_secret = enrolling.register(fresh)          # its own client id: authsvc kicks the old session at rotation
    wait_until(lambda: not vehicle.connected, message="the old secret's session was not ended")
    vehicle.close()
    assert new_secret != old_secret
    with pytest.raises(ConnectRefused):
        MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle.vehicle_id).connect(old_secret)
    renewed = MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle.vehicle_id).connect(new_secret)
    assert renewed.connected
    renewed.close()


def test_revoke_kicks_the_live_session_and_refuses_reconnects(operator, stack):
    vehicle, token = new_vehicle(operator, stack)
    secret = vehicle.register(token)
    vehicle.connect(secret)
    response = operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/revoke", json={"reason": "stolen"})
    assert response.status_code == 200, response.text
    assert response.json()["session"] == "kicked"
    wait_until(lambda: not vehicle.connected, timeout=5, message="the revoked vehicle is still connected")
    vehicle.close()
    with pytest.raises(ConnectRefused):
        MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle.vehicle_id).connect(secret)


def test_config_update_reaches_the_connected_vehicle(operator, stack):
    vehicle, token = new_vehicle(operator, stack)
    vehicle.connect(vehicle.register(token))
    try:
        vehicle.subscribe_commands()
        response = operator.put(f"/api/v1/vehicles/{vehicle.vehicle_id}/config", json={"config": {"max_speed": 3}})
        assert response.status_code == 200, response.text
        assert response.json()["command"]["delivered"] is True
        command = vehicle.wait_for_command("config.update")
        assert command["data"] == {"version": 1, "config": {"max_speed": 3}}
        assert command["msg_id"] == response.json()["command"]["msg_id"]
    finally:
        vehicle.close()


def test_config_set_while_offline_is_sent_when_the_vehicle_comes_online(operator, stack):
    vehicle, token = new_vehicle(operator, stack)
    secret = vehicle.register(token)
    response = operator.put(f"/api/v1/vehicles/{vehicle.vehicle_id}/config", json={"config": {"max_speed": 2}})
    assert response.status_code == 200 and response.json()["command"]["delivered"] is False
    vehicle.connect(secret)
    try:
        vehicle.subscribe_commands()
        # The resend follows the vehicle's presence, so it can race the first subscription; the api retries.
        command = vehicle.wait_for_command("config.update", timeout=15)
        assert command["data"] == {"version": 1, "config": {"max_speed": 2}}
    finally:
        vehicle.close()


def test_a_vehicle_connects_over_tls_verifying_the_broker_with_the_local_ca(operator, stack):
    require_tool("openssl", "the embedded stack makes its TLS listener's certificates with it")
    ca = stack.tls_dir / "ca.pem"
    assert ca.exists(), "openssl is installed, yet the stack made no local CA"
    vehicle, token = new_vehicle(operator, stack)
    secret = vehicle.register(token)
    tls = MqttVehicle("127.0.0.1", stack.config.ports.mqtt_tls, vehicle.vehicle_id)
    tls.connect(secret, tls_ca=str(ca))
    try:
        message = tls.telemetry()
        wait_until(lambda: rows(stack.database_url, "SELECT 1 FROM telemetry WHERE msg_id = %s",
                                (message["msg_id"],)))
    finally:
        tls.close()
