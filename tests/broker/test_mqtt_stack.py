"""The stand-in with the production ``emqx/emqx.conf`` and the real authsvc, as the embedded stack runs them:
HTTP authentication (device secrets, enrollment tokens), the vehicle ACL on publish/subscribe and on the Last
Will, takeover and kick of an authenticated vehicle.

Needs FLEET_STACK_COMPONENTS=authsvc,broker (skipped otherwise; a failure under CI=true).
"""
from __future__ import annotations

import itertools
import os

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetcore import topics
from fleetcore.emqx_api import EmqxApi
from fleetctl.enroll import enroll_bulk
from tests.support.required import require_components
from tests.support.vehicle import ConnectRefused, MqttVehicle
from tests.support.waiting import wait_until

_numbers = itertools.count(1)


@pytest.fixture(autouse=True)
def _needs_authsvc_and_broker(stack):
    require_components(stack, "authsvc", "broker")


@pytest.fixture
def registered(stack):
    """A vehicle enrolled in the database and registered over MQTT: (vehicle, device secret)."""
    fleet = f"mqtt-{os.getpid()}"
    enrollment, = enroll_bulk(stack.database_url, stack.secrets["FLEET_DEVICE_SECRET_KEY"], fleet_id=fleet,
                              count=1, prefix=f"mqtt-{os.getpid()}-{next(_numbers)}-", create_fleet=True)
    vehicle = MqttVehicle("127.0.0.1", stack.config.ports.mqtt, enrollment.vehicle_id)
    secret = vehicle.register(enrollment.token)
    yield vehicle, secret
    vehicle.close()


def _broker_log(stack) -> str:
    return (stack.log_dir / "broker.log").read_text(encoding="utf-8", errors="replace")


def test_wrong_secret_is_refused_not_authorized(stack, registered):
    vehicle, _secret = registered
    with pytest.raises(ConnectRefused) as info:
        MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle.vehicle_id).connect("not-the-secret")
    assert "authorized" in info.value.reason.lower()


def test_vehicle_acl_on_subscribe_and_publish(stack, registered):
    vehicle, secret = registered
    vehicle.connect(secret)
    vid = vehicle.vehicle_id
    assert vehicle.subscribe(topics.vehicle_topic(vid, topics.Kind.CMD)) == [1]
    assert vehicle.subscribe("fleet/v1/+/cmd") == [0x80]
    assert vehicle.subscribe("fleet/v1/other-vehicle/cmd") == [0x80]
    # a publish outside its tree is acknowledged (deny_action = ignore) and dropped; the vehicle stays connected
    vehicle.publish_raw("fleet/v1/other-vehicle/telemetry", b'{"spoof":true}')
    vehicle.telemetry()
    assert vehicle.connected
    wait_until(lambda: "event=mqtt.publish_denied" in _broker_log(stack) and vid in _broker_log(stack))


def test_takeover_and_kick_of_an_authenticated_vehicle(stack, registered):
    vehicle, secret = registered
    vehicle.connect(secret)
    second = MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle.vehicle_id).connect(secret)
    try:
        wait_until(lambda: vehicle.disconnects, message="the first connection was not closed")
        wait_until(lambda: f"clientid={vehicle.vehicle_id} reason=takenover" in _broker_log(stack))
        api = EmqxApi(stack.url("emqx_api"), "fleet", stack.secrets["FLEET_EMQX_API_SECRET"])
        assert api.kick(vehicle.vehicle_id) is True
        wait_until(lambda: second.disconnects, message="kick did not close the connection")
        wait_until(lambda: f"clientid={vehicle.vehicle_id} reason=kicked" in _broker_log(stack))
    finally:
        second.close()


def test_last_will_outside_the_acl_is_not_published(stack, registered):
    vehicle, secret = registered
    # a will on another vehicle's connection topic: accepted at CONNECT, refused when it would be published
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=vehicle.vehicle_id, protocol=mqtt.MQTTv311)
    client.username_pw_set(vehicle.vehicle_id, secret)
    client.will_set("fleet/v1/other-vehicle/connection", b'{"state":"CONNECTIONBROKEN"}', qos=1, retain=True)
    connected = []
    client.on_connect = lambda *args: connected.append(args[3])
    client.connect("127.0.0.1", stack.config.ports.mqtt, 30)
    client.loop_start()
    wait_until(lambda: connected)
    client.loop_stop()
    client.socket().close()
    wait_until(lambda: "event=mqtt.last_will_denied" in _broker_log(stack)
               and "topic=fleet/v1/other-vehicle/connection" in _broker_log(stack))
