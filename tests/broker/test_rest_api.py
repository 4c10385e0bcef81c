"""The EMQX REST API subset of the stand-in: the answers the api and authsvc rely on (docs/EMQX.md §6)."""
from __future__ import annotations

import base64

import pytest

from fleetcore.emqx_api import EmqxApi
from tests.support.standin import API_KEY, API_SECRET, StandinBroker
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    instance = StandinBroker(tmp_path_factory.mktemp("standin-api")).start()
    yield instance
    assert instance.stop() == 0


@pytest.fixture
def clients():
    made = []
    yield made
    for client in made:
        client.disconnect()


def test_status_needs_no_key_and_reads_like_emqx(broker):
    status, text = broker.http("GET", "/status", auth=False)
    assert status == 200
    assert text == "Node emqx@127.0.0.1 is started\nemqx is running"


@pytest.mark.parametrize("auth", [False, (API_KEY, "wrong"), ("nobody", API_SECRET)])
def test_api_without_a_valid_key_is_401(broker, auth):
    status, body = broker.http("GET", "/api/v5/clients", auth=auth)
    assert status == 401
    assert body["code"] == "BAD_API_KEY_OR_SECRET"


def test_viewer_key_may_read_but_not_publish(broker):
    assert broker.http("GET", "/api/v5/stats", auth=("viewer-key", "viewer-secret"))[0] == 200
    status, body = broker.http("POST", "/api/v5/publish", {"topic": "t", "payload": "p"},
                               auth=("viewer-key", "viewer-secret"))
    assert (status, body["code"]) == (403, "UNAUTHORIZED_ROLE")


def test_publish_200_when_delivered_202_when_nobody_subscribed(broker, clients):
    status, body = broker.publish("api/veh-1/cmd", '{"type":"x"}')
    assert (status, body) == (202, {"reason_code": 16, "message": "no_matching_subscribers"})
    vehicle = broker.client("api-veh-1").connect()
    clients.append(vehicle)
    vehicle.subscribe("api/veh-1/cmd", 1)
    status, body = broker.publish("api/veh-1/cmd", '{"type":"y"}', qos=1)
    assert status == 200 and len(body["id"]) == 32
    message, = vehicle.wait_for("api/veh-1/cmd")
    assert (message.payload, message.qos) == (b'{"type":"y"}', 1)


def test_publish_base64_and_retained(broker, clients):
    status, _ = broker.http("POST", "/api/v5/publish", {
        "topic": "api/retained", "payload": base64.b64encode(b"\x00\xffbin").decode(),
        "payload_encoding": "base64", "qos": 1, "retain": True})
    assert status == 202                                   # nobody subscribed, but it is retained
    late = broker.client("api-late").connect()
    clients.append(late)
    late.subscribe("api/retained", 1)
    message, = late.wait_for("api/retained")
    assert (message.payload, message.retain) == (b"\x00\xffbin", True)


@pytest.mark.parametrize("body,reason", [
    ({"topic": "api/+/cmd", "payload": "x"}, 144),
    ({"topic": "", "payload": "x"}, 144),
])
def test_publish_bad_topic_is_400(broker, body, reason):
    status, answer = broker.http("POST", "/api/v5/publish", body)
    assert (status, answer["reason_code"], answer["message"]) == (400, reason, "topic_name_invalid")


@pytest.mark.parametrize("body", [
    {"topic": "t"}, {"topic": "t", "payload": {"not": "a string"}},
    {"topic": "t", "payload": "!!", "payload_encoding": "base64"}, {"topic": "t", "payload": "x", "qos": 3},
])
def test_publish_bad_body_is_400(broker, body):
    assert broker.http("POST", "/api/v5/publish", body)[0] == 400


def test_clients_list_get_and_paging(broker, clients):
    for i in range(3):
        client = broker.client(f"page-{i}", username=f"user-{i}").connect()
        clients.append(client)
    status, page = broker.http("GET", "/api/v5/clients?limit=2&page=1&like_clientid=page-")
    assert status == 200
    assert page["meta"] == {"page": 1, "limit": 2, "count": 3, "hasnext": True}
    assert len(page["data"]) == 2
    status, one = broker.http("GET", "/api/v5/clients/page-1")
    assert status == 200
    assert (one["clientid"], one["username"], one["connected"], one["proto_ver"]) == ("page-1", "user-1", True, 4)
    assert broker.http("GET", "/api/v5/clients/nobody")[1]["code"] == "CLIENTID_NOT_FOUND"


def test_kick_is_204_then_404_and_the_reason_is_kicked(broker):
    vehicle = broker.client("kick-me", clean_session=False).connect()
    vehicle.subscribe("kick/cmd", 1)
    status, _ = broker.http("DELETE", "/api/v5/clients/kick-me")
    assert status == 204
    wait_until(lambda: vehicle.disconnects, message="kicked client still connected")
    wait_until(lambda: any("clientid=kick-me reason=kicked" in line for line in broker.lines))
    assert broker.http("DELETE", "/api/v5/clients/kick-me")[0] == 404
    assert broker.publish("kick/cmd", "x")[0] == 202      # the kicked session is gone with its subscription
    vehicle.client.loop_stop()


def test_authorization_cache_clear(broker, clients):
    vehicle = broker.client("cache-1").connect()
    clients.append(vehicle)
    assert broker.http("DELETE", "/api/v5/clients/cache-1/authorization/cache")[0] == 204
    assert broker.http("DELETE", "/api/v5/clients/ghost/authorization/cache")[0] == 404
    assert broker.http("DELETE", "/api/v5/authorization/cache")[0] == 204


def test_metrics_stats_and_rules(broker):
    status, metrics = broker.http("GET", "/api/v5/metrics")
    assert status == 200 and metrics[0]["node"] == "emqx@127.0.0.1" and "messages.received" in metrics[0]
    status, stats = broker.http("GET", "/api/v5/stats?aggregate=true")
    assert status == 200 and {"connections.count", "subscriptions.count", "retained.count"} <= set(stats)
    status, rules = broker.http("GET", "/api/v5/rules")
    assert (status, rules["data"]) == (200, [])
    assert broker.http("GET", "/api/v5/rules/none/metrics")[0] == 404


def test_fleetcore_client_talks_to_the_stand_in(broker, clients):
    """The api's and authsvc's own client (fleetcore.emqx_api) against the stand-in."""
    api = EmqxApi(broker.api_url, API_KEY, API_SECRET)
    assert api.publish("fc/veh/cmd", {"type": "ping"}).delivered is False
    vehicle = broker.client("fc-veh").connect()
    clients.append(vehicle)
    vehicle.subscribe("fc/veh/cmd", 1)
    result = api.publish("fc/veh/cmd", {"type": "ping"})
    assert result.delivered and result.message_id
    assert [m.payload for m in vehicle.wait_for("fc/veh/cmd")] == [b'{"type":"ping"}']


def test_sigterm_stops_gracefully_with_exit_0(tmp_path):
    instance = StandinBroker(tmp_path).start()
    client = instance.client("term-1", will=("term/will", b"W", 1, True)).connect()
    assert instance.terminate_and_wait() == 0
    wait_until(lambda: client.disconnects)
    client.client.loop_stop()
    assert instance.log_events("standin.stopped")


def test_publish_payload_over_max_packet_size_is_400(broker):
    status, body = broker.publish("api/big", "x" * (1024 * 1024 + 1))
    assert (status, body) == (400, {"reason_code": 151, "message": "packet_too_large"})
