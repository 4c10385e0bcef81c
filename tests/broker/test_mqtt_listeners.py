"""The WebSocket and TLS listeners: paho clients over ``websockets`` and ``tls_set`` route to a TCP client."""
from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from tests.support.standin import PahoClient, StandinBroker, make_certs
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def broker(tmp_path_factory, certs):
    instance = StandinBroker(tmp_path_factory.mktemp("standin-listeners"), certs=certs).start()
    yield instance
    assert instance.stop() == 0


def _close(*clients: PahoClient) -> None:
    for client in clients:
        client.disconnect()


def test_websocket_client_at_mqtt_path_with_subprotocol_mqtt(broker):
    tcp = broker.client("ws-tcp-sub").connect()
    tcp.subscribe("ws/t", 1)
    ws = PahoClient("127.0.0.1", broker.ws_port, "ws-client", transport="websockets").connect()
    try:
        ws.subscribe("ws/back", 1)
        ws.publish("ws/t", b"over websocket", qos=1)
        assert [m.payload for m in tcp.wait_for("ws/t")] == [b"over websocket"]
        tcp.publish("ws/back", b"to websocket", qos=1)
        assert [m.payload for m in ws.wait_for("ws/back")] == [b"to websocket"]
    finally:
        _close(tcp, ws)


def test_websocket_other_path_is_not_mqtt(broker):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{broker.ws_port}/other", timeout=5)
    assert info.value.code == 404


def test_tls_client_verifies_the_broker_certificate_and_routes(broker, certs):
    tls = PahoClient("127.0.0.1", broker.tls_port, "tls-client", tls_ca=str(certs / "ca.pem")).connect()
    tcp = broker.client("tls-tcp-sub").connect()
    try:
        tcp.subscribe("tls/t", 1)
        tls.publish("tls/t", b"over tls", qos=1)
        assert [m.payload for m in tcp.wait_for("tls/t")] == [b"over tls"]
    finally:
        _close(tls, tcp)



def test_a_listener_that_cannot_start_stops_the_broker_with_a_message_naming_it(tmp_path):
    missing = tmp_path / "no-certs"
    missing.mkdir()
    instance = StandinBroker(tmp_path / "state", certs=missing)
    with pytest.raises(AssertionError, match="exited with 2"):
        instance.start(timeout=20)
    instance.stop()
    wait_until(lambda: any("listeners.ssl.default.ssl_options" in line for line in instance.lines))
