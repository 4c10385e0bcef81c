"""Ack on receipt, as EMQX does, in order, without waiting for the rule actions: a rule with an HTTP action to a sink
that holds some messages until the test releases them or answers 500 (the sink is a test HTTP server standing in for
any webhook receiver). What the action does later is seen in its metrics over /api/v5, never in the PUBACK."""
from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from emqx.standin.mqtt import codec
from tests.support.delivery import RuleActions
from tests.support.standin import API_KEY, API_SECRET, StandinBroker, free_port
from tests.support.waiting import wait_until

RULES = """
connectors.http.sink {{
  url = "http://127.0.0.1:{port}"
  pool_size = 8
  enable_pipelining = 1
}}
actions.http.sink_action {{
  connector = "sink"
  parameters {{ path = "/ingest", method = post, max_retries = 0 }}
  resource_opts {{ request_ttl = "{ttl}" }}
}}
rule_engine {{
  ignore_sys_message = true
  rules {{
    to_sink {{
      sql = \"\"\"SELECT payload, topic FROM "pipe/#" \"\"\"
      actions = ["http:sink_action"]
    }}
  }}
}}
"""


class Sink:
    """Records when each payload arrived and when it was answered; ``held`` payloads are answered only once
    ``release`` is set, ``fail`` payloads get 500 (an unrecoverable answer for EMQX's HTTP action)."""

    def __init__(self, held: set[str]) -> None:
        self.held = held
        self.release = threading.Event()
        self.arrived: dict[str, float] = {}
        self.answered: dict[str, float] = {}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                payload = body["payload"]
                sink.arrived.setdefault(payload, time.monotonic())
                if payload in sink.held:
                    sink.release.wait(30)
                status = 500 if payload.startswith("fail") else 200
                if status == 200:
                    sink.answered[payload] = time.monotonic()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def sink():
    instance = Sink(held={"m0"})
    yield instance
    instance.release.set()
    instance.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory, sink):
    instance = StandinBroker(tmp_path_factory.mktemp("standin-pipe"),
                             extra_conf=RULES.format(port=sink.port, ttl="30s")).start()
    yield instance
    sink.release.set()
    assert instance.stop() == 0


def actions_of(broker: StandinBroker) -> RuleActions:
    return RuleActions(broker.api_url, API_KEY, API_SECRET)


def test_puback_on_receipt_in_publish_order_while_the_action_is_still_waiting(broker, sink):
    raw = broker.raw()
    raw.connect("pipe-pub")
    topic = codec.encode_topic("pipe/veh-1/telemetry")
    raw.send(b"".join(codec.encode_publish(topic, f"m{i}".encode(), 1, False, i + 1) for i in range(10)))
    acks = []
    while len(acks) < 10:
        ptype, _flags, body = raw.read()
        assert ptype == codec.PUBACK
        acks.append(codec.decode_packet_id(body))
    assert acks == list(range(1, 11))
    assert "m0" not in sink.answered                 # every PUBACK came while the sink still held m0
    actions = actions_of(broker)
    try:
        # HTTP is an async connector: the client's worker sends the other nine while m0 is in flight
        wait_until(lambda: actions.metrics("http:sink_action")["success"] == 9)
        assert actions.metrics("http:sink_action")["inflight"] == 1
    finally:
        sink.release.set()
    actions.wait_processed()
    assert sorted(sink.answered) == sorted(f"m{i}" for i in range(10))
    assert actions.metrics("http:sink_action")["success"] == 10
    raw.close()


def test_a_failed_delivery_is_acknowledged_counted_as_failed_and_the_client_stays(broker, sink):
    actions = actions_of(broker)
    actions.wait_processed()
    before = actions.metrics("http:sink_action")
    rule_before = actions.rule_metrics("to_sink")
    raw = broker.raw()
    raw.connect("pipe-fail")
    raw.send(codec.encode_publish(codec.encode_topic("pipe/veh-2/telemetry"), b"fail-1", 1, False, 1))
    ptype, _flags, body = raw.read()
    assert (ptype, codec.decode_packet_id(body)) == (codec.PUBACK, 1)
    actions.wait_processed()
    after = actions.metrics("http:sink_action")
    rule_after = actions.rule_metrics("to_sink")
    assert after["failed"] - before["failed"] == 1
    assert (after["success"], after["retried"]) == (before["success"], before["retried"])   # not retried
    assert rule_after["actions.failed"] - rule_before["actions.failed"] == 1
    assert rule_after["actions.failed.unknown"] - rule_before["actions.failed.unknown"] == 1
    raw.send(codec.encode_publish(codec.encode_topic("pipe/veh-2/telemetry"), b"ok-after-fail", 1, False, 2))
    ptype, _flags, body = raw.read()
    assert (ptype, codec.decode_packet_id(body)) == (codec.PUBACK, 2)      # the connection was not closed
    raw.close()


def test_sigterm_delivers_what_the_actions_buffered_before_it_exits(tmp_path):
    sink = Sink(held={"held-at-shutdown"})
    broker = StandinBroker(tmp_path, extra_conf=RULES.format(port=sink.port, ttl="30s")).start()
    try:
        raw = broker.raw()
        raw.connect("pipe-term")
        raw.send(codec.encode_publish(codec.encode_topic("pipe/veh-3/telemetry"), b"held-at-shutdown", 1, False, 9))
        ptype, _flags, body = raw.read(timeout=10)
        assert (ptype, codec.decode_packet_id(body)) == (codec.PUBACK, 9)     # on receipt
        wait_until(lambda: "held-at-shutdown" in sink.arrived)
        broker.process.popen.send_signal(signal.SIGTERM)
        assert raw.closed_by_broker()
        threading.Timer(0.5, sink.release.set).start()        # the action answers while the broker drains
        assert broker.process.popen.wait(15) == 0
        broker.process = None
        assert "held-at-shutdown" in sink.answered
    finally:
        sink.release.set()
        broker.stop()
        sink.close()
