"""The stand-in's MQTT 3.1.1 behaviour, seen by real paho-mqtt clients and raw sockets over TCP.

The broker runs as a subprocess (``python -m emqx.standin``) with legitimate EMQX configurations: no
authenticator and ``no_match = allow`` (EMQX: everyone may do everything), or ``no_match = deny`` with no
sources (EMQX: every publish/subscribe is denied) to exercise the authorization paths without an auth service.
"""
from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from emqx.standin.mqtt import codec
from tests.support.standin import StandinBroker
from tests.support.waiting import wait_until

DENY_ALL = """
authentication = []
authorization {
  no_match = deny
  deny_action = ignore
  sources = []
}
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    instance = StandinBroker(tmp_path_factory.mktemp("standin")).start()
    yield instance
    assert instance.stop() == 0


@pytest.fixture(scope="module")
def tight_broker(tmp_path_factory):
    """Small limits and short timers, set the way the embedded stack sets everything: EMQX_* variables."""
    instance = StandinBroker(tmp_path_factory.mktemp("standin-tight"), env={
        "EMQX_MQTT__MAX_PACKET_SIZE": "1KB",
        "EMQX_MQTT__IDLE_TIMEOUT": "1s",
        "EMQX_MQTT__RETRY_INTERVAL": "1s",
        "EMQX_MQTT__MAX_INFLIGHT": "2",
        "EMQX_MQTT__MAX_MQUEUE_LEN": "3",
    }).start()
    yield instance
    assert instance.stop() == 0


@pytest.fixture
def clients():
    made = []
    yield made
    for client in made:
        client.client.disconnect()
        client.client.loop_stop()


def connect(broker, clients, client_id, **kwargs):
    client = broker.client(client_id, **kwargs).connect()
    clients.append(client)
    return client


# -- connecting -----------------------------------------------------------------------------------------------

def test_mqtt5_connect_gets_connack_unacceptable_protocol_version_and_close(broker):
    raw = broker.raw()
    raw.send(codec.encode_connect("v5-client", proto_ver=5))
    ptype, _flags, body = raw.read()
    assert (ptype, body) == (codec.CONNACK, b"\x00\x01")
    assert raw.closed_by_broker()


def test_paho_mqtt5_client_is_told_unsupported_protocol_version(broker):
    results = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="v5-paho", protocol=mqtt.MQTTv5)
    client.on_connect = lambda _c, _u, _f, reason, _p: results.append(str(reason))
    client.connect("127.0.0.1", broker.mqtt_port)
    client.loop_start()
    try:
        wait_until(lambda: results)
    finally:
        client.loop_stop()
    assert results[0] == "Unsupported protocol version"


def test_mqtt31_client_is_accepted(broker):
    raw = broker.raw()
    assert raw.connect("old-31", proto_name="MQIsdp", proto_ver=3) == (False, 0)
    raw.close()


def test_empty_client_id_gets_an_id_when_clean_and_is_rejected_when_persistent(broker):
    raw = broker.raw()
    assert raw.connect("", clean_session=True) == (False, codec.CONNACK_ACCEPTED)
    raw.close()
    raw = broker.raw()
    assert raw.connect("", clean_session=False) == (False, codec.CONNACK_IDENTIFIER_REJECTED)
    assert raw.closed_by_broker()


def test_first_packet_other_than_connect_closes_the_connection(broker):
    raw = broker.raw()
    raw.send(codec.PINGREQ_PACKET)
    assert raw.closed_by_broker()


# -- routing --------------------------------------------------------------------------------------------------

def test_delivery_qos_is_the_minimum_of_publish_and_subscription_and_retain_is_cleared(broker, clients):
    sub = connect(broker, clients, "route-sub")
    assert sub.subscribe("route/+/x", 1) == [1]
    pub = connect(broker, clients, "route-pub")
    pub.publish("route/a/x", b"q0", qos=0)
    pub.publish("route/b/x", b"q1", qos=1, retain=True)
    pub.publish("route/b/y", b"no match", qos=1)
    [a_x], [b_x] = sub.wait_for("route/a/x"), sub.wait_for("route/b/x")
    assert (a_x.payload, a_x.qos) == (b"q0", 0)
    assert (b_x.payload, b_x.qos, b_x.retain) == (b"q1", 1, False)
    assert sub.received("route/b/y") == []


def test_overlapping_subscriptions_get_one_copy_each_at_their_own_qos(broker, clients):
    """As from EMQX (it dispatches per matched filter): not one copy at the highest QoS."""
    sub = connect(broker, clients, "overlap-sub")
    assert sub.subscribe("overlap/#", 2) == [2]
    assert sub.subscribe("overlap/+", 1) == [1]
    pub = connect(broker, clients, "overlap-pub")
    pub.publish("overlap/a", b"twice", qos=2)
    pub.publish("overlap/a/b", b"once", qos=2)
    copies = sub.wait_for("overlap/a", 2)
    assert sorted((m.payload, m.qos) for m in copies) == [(b"twice", 1), (b"twice", 2)]
    assert [(m.payload, m.qos) for m in sub.wait_for("overlap/a/b")] == [(b"once", 2)]
    assert len(sub.received("overlap/a")) == 2      # "overlap/a/b" came after both copies (one publisher, in order)


def test_qos2_end_to_end(broker, clients):
    sub = connect(broker, clients, "q2-sub")
    assert sub.subscribe("q2/t", 2) == [2]
    pub = connect(broker, clients, "q2-pub")
    for i in range(5):
        pub.publish("q2/t", f"m{i}", qos=2)
    messages = sub.wait_for("q2/t", 5)
    assert [m.payload for m in messages] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert {m.qos for m in messages} == {2}


def test_pubacks_come_back_in_publish_order(broker):
    raw = broker.raw()
    raw.connect("order-pub")
    topic = codec.encode_topic("order/t")
    pids = list(range(1, 201))
    raw.send(b"".join(codec.encode_publish(topic, b"p", 1, False, pid) for pid in pids))
    acks = []
    while len(acks) < len(pids):
        ptype, _flags, body = raw.read()
        assert ptype == codec.PUBACK
        acks.append(codec.decode_packet_id(body))
    assert acks == pids
    raw.close()


def test_retained_message_goes_only_to_a_new_subscription_that_matches_it(broker, clients):
    pub = connect(broker, clients, "ret-pub")
    pub.publish("ret/a/state", b"A", qos=1, retain=True)
    pub.publish("ret/b/state", b"B", qos=1, retain=True)
    sub = connect(broker, clients, "ret-sub")
    sub.subscribe("ret/a/#", 1)
    message, = sub.wait_for("ret/a/state")
    assert (message.payload, message.retain) == (b"A", True)
    other = connect(broker, clients, "ret-nosub")          # no subscription: nothing retained arrives
    pub.publish("ret/a/state", b"", qos=1, retain=True)   # empty retained payload clears it
    late = connect(broker, clients, "ret-late")
    late.subscribe("ret/#", 1)
    message, = late.wait_for("ret/b/state")
    assert message.payload == b"B"
    assert late.received("ret/a/state") == [] and other.received() == []


# -- sessions ---------------------------------------------------------------------------------------------------

def test_persistent_session_keeps_subscription_and_queues_qos1_while_offline(broker, clients):
    vehicle = connect(broker, clients, "persist-1", clean_session=False)
    vehicle.subscribe("persist/cmd", 1)
    vehicle.disconnect()
    wait_until(lambda: broker.http("GET", "/api/v5/clients/persist-1")[1]["connected"] is False)
    for i in range(3):
        status, _ = broker.publish("persist/cmd", f"cmd{i}", qos=1)
        assert status == 200                               # an offline persistent session counts as delivered
    status, info = broker.http("GET", "/api/v5/clients/persist-1")
    assert info["mqueue_len"] == 3
    again = connect(broker, clients, "persist-1", clean_session=False)
    assert again.session_present is True
    assert [m.payload for m in again.wait_for("persist/cmd", 3)] == [b"cmd0", b"cmd1", b"cmd2"]


def test_clean_session_drops_the_previous_session(broker, clients):
    first = connect(broker, clients, "clean-1", clean_session=False)
    first.subscribe("clean/cmd", 1)
    first.disconnect()
    wait_until(lambda: broker.http("GET", "/api/v5/clients/clean-1")[1]["connected"] is False)
    second = connect(broker, clients, "clean-1", clean_session=True)
    assert second.session_present is False
    assert broker.publish("clean/cmd", "x")[0] == 202


def test_second_connection_with_same_id_takes_over_the_session(broker, clients):
    first = connect(broker, clients, "dup-1", clean_session=False)
    first.subscribe("dup/cmd", 1)
    second = connect(broker, clients, "dup-1", clean_session=False)
    assert second.session_present is True
    wait_until(lambda: first.disconnects, message="first connection not closed")
    wait_until(lambda: broker.log_events("mqtt.client_disconnected") and any(
        "clientid=dup-1 reason=takenover" in line for line in broker.lines))
    assert broker.publish("dup/cmd", "to-second")[0] == 200
    assert [m.payload for m in second.wait_for("dup/cmd")] == [b"to-second"]
    assert first.received("dup/cmd") == []


def test_clean_takeover_discards_the_old_session(broker, clients):
    first = connect(broker, clients, "dup-2", clean_session=False)
    first.subscribe("dup2/cmd", 1)
    second = connect(broker, clients, "dup-2", clean_session=True)
    assert second.session_present is False
    wait_until(lambda: first.disconnects)
    wait_until(lambda: any("clientid=dup-2 reason=discarded" in line for line in broker.lines))
    assert broker.publish("dup2/cmd", "x")[0] == 202


# -- last will ----------------------------------------------------------------------------------------------

def test_will_is_published_with_retain_on_abnormal_disconnect(broker, clients):
    watcher = connect(broker, clients, "will-watch")
    watcher.subscribe("will/veh-1/connection", 1)
    vehicle = connect(broker, clients, "will-veh-1", will=("will/veh-1/connection", b"CONNECTIONBROKEN", 1, True))
    vehicle.drop()
    message, = watcher.wait_for("will/veh-1/connection")
    assert message.payload == b"CONNECTIONBROKEN"
    late = connect(broker, clients, "will-late")          # the will was retained
    late.subscribe("will/veh-1/connection", 1)
    message, = late.wait_for("will/veh-1/connection")
    assert (message.payload, message.retain) == (b"CONNECTIONBROKEN", True)


def test_no_will_after_a_clean_disconnect(broker, clients):
    watcher = connect(broker, clients, "will-watch-2")
    watcher.subscribe("will2/#", 1)
    vehicle = connect(broker, clients, "will-veh-2", will=("will2/veh-2/connection", b"CONNECTIONBROKEN", 1, False))
    vehicle.publish("will2/veh-2/connection", b"OFFLINE", qos=1)
    vehicle.disconnect()
    watcher.wait_for("will2/veh-2/connection")
    wait_until(lambda: any("clientid=will-veh-2 reason=normal" in line for line in broker.lines))
    # a marker sent after the disconnect arrives after anything the disconnect could have caused
    broker.publish("will2/marker", "m")
    watcher.wait_for("will2/marker")
    assert [m.payload for m in watcher.received("will2/veh-2/connection")] == [b"OFFLINE"]


def test_keepalive_timeout_closes_the_connection_and_publishes_the_will(broker, clients):
    watcher = connect(broker, clients, "ka-watch")
    watcher.subscribe("ka/veh/connection", 1)
    raw = broker.raw()
    assert raw.connect("ka-veh", keepalive=1, will=codec.Will("ka/veh/connection", b"LOST", 1, False)) == (False, 0)
    assert raw.closed_by_broker(timeout=10)                 # silent for 1 s × 1.5
    assert [m.payload for m in watcher.wait_for("ka/veh/connection")] == [b"LOST"]
    wait_until(lambda: any("clientid=ka-veh reason=keepalive_timeout" in line for line in broker.lines))


def test_pingreq_keeps_the_connection_alive(broker):
    raw = broker.raw()
    raw.connect("ka-ping", keepalive=2)
    for _ in range(3):                                     # 3 × 1 s > 2 s × 1.5: alive only thanks to PINGREQs
        with pytest.raises(TimeoutError):
            raw.read(timeout=1.0)
        raw.send(codec.PINGREQ_PACKET)
        assert raw.read()[0] == codec.PINGRESP
    raw.close()


# -- limits -------------------------------------------------------------------------------------------------

def test_packet_larger_than_max_packet_size_closes_the_connection(tight_broker):
    raw = tight_broker.raw()
    raw.connect("big-1")
    raw.send(codec.encode_publish(codec.encode_topic("big/t"), b"x" * 2000, 1, False, 1))
    assert raw.closed_by_broker()
    wait_until(lambda: any("clientid=big-1 reason=frame_too_large" in line for line in tight_broker.lines))


def test_connection_without_connect_is_closed_after_idle_timeout(tight_broker):
    raw = tight_broker.raw()
    assert raw.closed_by_broker(timeout=10)


def test_max_inflight_holds_back_and_retry_resends_with_dup(tight_broker):
    sub = tight_broker.raw()
    sub.connect("inflight-sub")
    sub.send(codec.encode_subscribe(1, [("inflight/t", 1)]))
    assert sub.read()[0] == codec.SUBACK
    for i in range(4):
        assert tight_broker.publish("inflight/t", f"m{i}", qos=1)[0] == 200
    first = [codec.decode_publish(f, b) for _t, f, b in (sub.read(), sub.read())]
    assert [(p[5], p[4]) for p in first] == [(b"m0", False), (b"m1", False)]     # only max_inflight = 2
    resent = codec.decode_publish(*sub.read(timeout=5)[1:])                      # retry_interval = 1 s
    assert (resent[5], resent[4], resent[2]) == (b"m0", True, first[0][2])       # same packet id, DUP set
    for pid in (first[0][2], first[1][2]):
        sub.send(codec.encode_puback(pid))
    payloads = set()
    while len(payloads) < 2:
        packet = codec.decode_publish(*sub.read()[1:])
        if packet[5] in (b"m2", b"m3"):
            payloads.add(packet[5])
            sub.send(codec.encode_puback(packet[2]))
    sub.close()


def test_offline_queue_drops_the_oldest_beyond_max_mqueue_len(tight_broker, clients):
    vehicle = connect(tight_broker, clients, "mq-1", clean_session=False)
    vehicle.subscribe("mq/cmd", 1)
    vehicle.disconnect()
    wait_until(lambda: tight_broker.http("GET", "/api/v5/clients/mq-1")[1]["connected"] is False)
    for i in range(5):
        tight_broker.publish("mq/cmd", f"c{i}")
    again = connect(tight_broker, clients, "mq-1", clean_session=False)
    assert [m.payload for m in again.wait_for("mq/cmd", 3)] == [b"c2", b"c3", b"c4"]


def test_max_connections_per_listener(tmp_path):
    small = StandinBroker(tmp_path, env={"EMQX_LISTENERS__TCP__DEFAULT__MAX_CONNECTIONS": "2"}).start()
    try:
        first, second = small.raw(), small.raw()
        assert first.connect("mc-1") == (False, 0) and second.connect("mc-2") == (False, 0)
        third = small.raw()
        assert third.closed_by_broker()
        first.close()
        wait_until(lambda: small.http("GET", "/api/v5/clients/mc-1")[0] == 404)
        fourth = small.raw()
        assert fourth.connect("mc-4") == (False, 0)
    finally:
        assert small.stop() == 0


# -- authorization paths --------------------------------------------------------------------------------------

def test_denied_subscribe_gets_0x80_and_denied_publish_is_acked_but_dropped(tmp_path, clients):
    deny = StandinBroker(tmp_path, auth_conf=DENY_ALL).start()
    try:
        client = connect(deny, clients, "denied-1")
        assert client.subscribe("anything/#", 1) == [0x80]
        info = client.publish("anything/x", b"dropped", qos=1)      # deny_action = ignore: PUBACK anyway
        assert info.is_published()
        assert client.is_connected
        assert deny.http("GET", "/api/v5/stats?aggregate=true")[1]["subscriptions.count"] == 0
        vehicle = connect(deny, clients, "denied-will", will=("denied/will", b"W", 1, True))
        vehicle.drop()
        wait_until(lambda: any("event=mqtt.last_will_denied" in line and "clientid=denied-will" in line
                               for line in deny.lines))
        assert deny.http("GET", "/api/v5/stats?aggregate=true")[1]["retained.count"] == 0
    finally:
        assert deny.stop() == 0


def test_deny_action_disconnect_closes_the_publisher(tmp_path):
    deny = StandinBroker(tmp_path, auth_conf=DENY_ALL.replace("deny_action = ignore",
                                                              "deny_action = disconnect")).start()
    try:
        raw = deny.raw()
        raw.connect("denied-2")
        raw.send(codec.encode_publish(codec.encode_topic("x/y"), b"p", 1, False, 1))
        assert raw.closed_by_broker()
        wait_until(lambda: any("clientid=denied-2 reason=not_authorized" in line for line in deny.lines))
    finally:
        assert deny.stop() == 0
