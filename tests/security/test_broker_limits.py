"""EMQX's protective limits in the stand-in, over real sockets: the per-client publish limiter, the listener's
connection rate, deny_action, flapping detection and the ban list, the TLS handshake timeout and the WebSocket
request timeout. One broker with short limits; each limit on a listener of its own so the tests do not share
buckets. The limits are deterministic: windows of an hour, so only the token counts decide."""
from __future__ import annotations

import socket
import time

import pytest

from fleetctl.ports import free_port
from tests.support.standin import PahoClient, StandinBroker, make_certs
from tests.support.waiting import wait_until

FLAPPING_BAN_S = 2


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("standin-limits")
    certs = make_certs(workdir / "certs")
    acl = workdir / "acl.conf"
    acl.write_text('{deny, all, publish, ["forbidden/#"]}.\n{deny, all, subscribe, ["forbidden/#"]}.\n{allow, all}.\n')
    ports = {name: free_port() for name in ("quota", "bytes", "rate")}
    auth_conf = f"""
authentication = []
authorization {{
  no_match = allow
  deny_action = disconnect
  sources = [{{type = file, enable = true, path = "{acl}"}}]
}}
"""
    extra_conf = f"""
listeners.tcp.quota {{ bind = "127.0.0.1:{ports['quota']}", messages_rate = "5/1h" }}
listeners.tcp.bytes {{ bind = "127.0.0.1:{ports['bytes']}", bytes_rate = "1KB/1h" }}
listeners.tcp.rate {{ bind = "127.0.0.1:{ports['rate']}", max_conn_rate = "3/1h" }}
flapping_detect {{ enable = true, window_time = "1m", max_count = 3, ban_time = "{FLAPPING_BAN_S}s" }}
"""
    # idle_timeout well above the handshake timeout: a TLS connection closed early was closed by the handshake timer
    env = {"EMQX_LISTENERS__SSL__DEFAULT__SSL_OPTIONS__HANDSHAKE_TIMEOUT": "300ms", "EMQX_MQTT__IDLE_TIMEOUT": "60s"}
    instance = StandinBroker(workdir, auth_conf=auth_conf, extra_conf=extra_conf, certs=certs, env=env).start()
    instance.ports = ports
    yield instance
    assert instance.stop() == 0


def _client(broker: StandinBroker, client_id: str, port: int | None = None) -> PahoClient:
    return PahoClient("127.0.0.1", port or broker.mqtt_port, client_id).connect()


def _messages_until_marker(subscriber: PahoClient, topic: str, marker: bytes) -> list[bytes]:
    """Payloads on ``topic`` up to a marker published after the messages under test: the broker delivers to one
    subscriber in the order it routed, so everything routed before the marker has arrived once it has."""
    wait_until(lambda: any(m.payload == marker for m in subscriber.received(topic)), 10, message="no marker")
    payloads = [m.payload for m in subscriber.received(topic)]
    return payloads[:payloads.index(marker)]


def _metric(broker: StandinBroker, name: str) -> int:
    status, body = broker.http("GET", "/api/v5/metrics")
    assert status == 200
    return body[0][name]


def test_a_client_over_its_message_rate_has_the_excess_dropped_and_acknowledged(broker):
    """messages_rate = "5/1h": 5 of 20 QoS 1 messages are routed; the other 15 get a PUBACK (MQTT 3.1.1 cannot say
    "quota exceeded") and are dropped, as EMQX 5.10 does. The connection stays up."""
    subscriber = _client(broker, "quota-sub")
    subscriber.subscribe("quota/t", 1)
    flooder = _client(broker, "quota-flooder", broker.ports["quota"])
    dropped_before = _metric(broker, "packets.publish.quota_exceeded")
    for i in range(20):
        flooder.publish("quota/t", f"m{i}".encode(), qos=1)          # waits for each PUBACK
    _client(broker, "quota-marker").publish("quota/t", b"marker", qos=1)
    assert _messages_until_marker(subscriber, "quota/t", b"marker") == [f"m{i}".encode() for i in range(5)]
    assert _metric(broker, "packets.publish.quota_exceeded") - dropped_before == 15
    assert flooder.is_connected and flooder.disconnects == []
    # the quota is per client: a second client on the same listener has its own 5
    other = _client(broker, "quota-other", broker.ports["quota"])
    other.publish("quota/t", b"other", qos=1)
    _client(broker, "quota-marker2").publish("quota/t", b"marker2", qos=1)
    assert _messages_until_marker(subscriber, "quota/t", b"marker2")[-1:] == [b"other"]
    for client in (subscriber, flooder, other):
        client.disconnect()


def test_a_client_over_its_byte_rate_has_the_message_that_does_not_fit_dropped(broker):
    """bytes_rate = "1KB/1h" counts payload bytes: 400 + 400 fit, a third 400 does not (dropped), 100 still does."""
    subscriber = _client(broker, "bytes-sub")
    subscriber.subscribe("bytes/t", 1)
    sender = _client(broker, "bytes-sender", broker.ports["bytes"])
    payloads = [b"a" * 400, b"b" * 400, b"c" * 400, b"d" * 100]
    for payload in payloads:
        sender.publish("bytes/t", payload, qos=1)
    _client(broker, "bytes-marker").publish("bytes/t", b"marker", qos=1)
    assert _messages_until_marker(subscriber, "bytes/t", b"marker") == [payloads[0], payloads[1], payloads[3]]
    subscriber.disconnect()
    sender.disconnect()


def test_connections_over_the_listeners_rate_are_closed_at_once(broker):
    """max_conn_rate = "3/1h": three connections are accepted; the next ones are closed before MQTT starts."""
    port = broker.ports["rate"]
    accepted = [_client(broker, f"rate-{i}", port) for i in range(3)]
    refused = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert refused.recv(1) == b"", "the connection over the rate is closed by the broker"
    refused.close()
    assert all(client.is_connected for client in accepted)
    for client in accepted:
        client.disconnect()


def test_deny_action_disconnect_closes_a_client_that_publishes_where_it_may_not(broker):
    client = _client(broker, "deny-pub")
    info = client.publish("forbidden/x", b"x", qos=1, wait=False)
    wait_until(lambda: client.disconnects, 10, message="not disconnected after a denied publish")
    assert not info.is_published(), "a denied QoS 1 publish is not acknowledged when it disconnects"
    client.disconnect()


def test_deny_action_disconnect_closes_a_client_that_subscribes_where_it_may_not(broker):
    client = _client(broker, "deny-sub")
    client.client.subscribe("forbidden/#", 1)
    wait_until(lambda: client.disconnects, 10, message="not disconnected after a denied subscribe")
    client.disconnect()


def _connect_code(broker: StandinBroker, client_id: str) -> int:
    raw = broker.raw()
    try:
        return raw.connect(client_id)[1]
    finally:
        raw.close()


def test_a_flapping_client_is_banned_listed_refused_and_let_in_again_when_the_ban_expires(broker):
    """max_count = 3 in window_time = 1m: the third CONNECT trips the detector (and still connects, as in EMQX),
    the fourth is refused with CONNACK 5 (banned → "not authorized" in MQTT 3.1.1) until ban_time has passed."""
    assert [_connect_code(broker, "flapper") for _ in range(3)] == [0, 0, 0]
    assert _connect_code(broker, "flapper") == 5
    status, body = broker.http("GET", "/api/v5/banned")
    assert status == 200
    [ban] = [b for b in body["data"] if b["who"] == "flapper"]
    assert (ban["as"], ban["by"], ban["reason"]) == ("clientid", "flapping detector", "flapping is detected")
    assert body["meta"]["count"] == len(body["data"])
    assert _connect_code(broker, "someone-else") == 0          # the ban is for that client id only
    wait_until(lambda: _connect_code(broker, "flapper") == 0, FLAPPING_BAN_S + 5, interval=0.25,
               message="still refused after the ban expired")


def test_a_ban_created_through_the_api_kicks_the_client_and_refuses_it_until_deleted(broker):
    victim = _client(broker, "banned-by-api")
    status, body = broker.http("POST", "/api/v5/banned", {"as": "clientid", "who": "banned-by-api",
                                                          "reason": "test"})
    assert status == 200 and (body["as"], body["who"], body["by"], body["until"]) == \
        ("clientid", "banned-by-api", "mgmt_api", "infinity")
    wait_until(lambda: victim.disconnects, 10, message="a banned client id keeps its connection")
    assert _connect_code(broker, "banned-by-api") == 5
    assert broker.http("POST", "/api/v5/banned", {"as": "clientid", "who": "banned-by-api"})[1]["code"] == \
        "ALREADY_EXISTS"
    assert broker.http("DELETE", "/api/v5/banned/clientid/banned-by-api")[0] == 204
    assert broker.http("DELETE", "/api/v5/banned/clientid/banned-by-api")[0] == 404
    assert _connect_code(broker, "banned-by-api") == 0
    victim.disconnect()


def _closed_by_broker(sock: socket.socket, within: float) -> bytes | None:
    """What the broker sent before closing, or None if it kept the connection open for ``within`` seconds."""
    received = b""
    deadline = time.monotonic() + within
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return None


def test_a_tls_connection_that_never_handshakes_is_closed_after_the_handshake_timeout(broker):
    """handshake_timeout = 300ms, idle_timeout = 60s: closed long before 60 s (asyncio alone waits 60 s)."""
    sock = socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5)
    try:
        assert _closed_by_broker(sock, within=10) == b""
    finally:
        sock.close()


def test_a_half_sent_websocket_upgrade_is_answered_408_and_closed(broker):
    """cowboy's request_timeout (5 s, not configurable in EMQX) bounds an unfinished upgrade request."""
    sock = socket.create_connection(("127.0.0.1", broker.ws_port), timeout=5)
    try:
        sock.sendall(b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        answer = _closed_by_broker(sock, within=15)
        assert answer is not None, "a half-sent upgrade request is held open"
        assert answer.startswith(b"HTTP/1.1 408 ")
    finally:
        sock.close()
