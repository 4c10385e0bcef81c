"""Ack after commit, in order, without blocking the socket: a rule with an HTTP action to a sink that answers
slowly for some messages (the sink is a test HTTP server standing in for any webhook receiver)."""
from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from emqx.standin.mqtt import codec
from tests.support.standin import StandinBroker, free_port
from tests.support.waiting import wait_until

RULES = """
connectors.http.sink {{
  url = "http://127.0.0.1:{port}"
  pool_size = 8
  enable_pipelining = 1
}}
actions.http.sink_action {{
  connector = "sink"
  parameters {{ path = "/ingest", method = post, request_timeout = "10s", max_retries = 0 }}
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
    """Records when each payload arrived and when it was answered; ``slow`` payloads are answered late,
    ``fail`` payloads get 500 (a failed delivery)."""

    def __init__(self, slow: dict[str, float]) -> None:
        self.slow = slow
        self.arrived: dict[str, float] = {}
        self.answered: dict[str, float] = {}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                payload = body["payload"]
                sink.arrived.setdefault(payload, time.monotonic())
                time.sleep(sink.slow.get(payload, 0.0))
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
    instance = Sink(slow={"m0": 1.0, "m3": 0.5})
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory, sink):
    instance = StandinBroker(tmp_path_factory.mktemp("standin-pipe"),
                             extra_conf=RULES.format(port=sink.port, ttl="3s")).start()
    yield instance
    assert instance.stop() == 0


def test_puback_only_after_the_rule_action_committed_and_in_publish_order(broker, sink):
    raw = broker.raw()
    raw.connect("pipe-pub")
    topic = codec.encode_topic("pipe/veh-1/telemetry")
    raw.send(b"".join(codec.encode_publish(topic, f"m{i}".encode(), 1, False, i + 1) for i in range(10)))
    acks = []
    while len(acks) < 10:
        ptype, _flags, body = raw.read()
        assert ptype == codec.PUBACK
        pid = codec.decode_packet_id(body)
        acks.append((pid, time.monotonic()))
        assert f"m{pid - 1}" in sink.answered, f"PUBACK {pid} before its action committed"
    assert [pid for pid, _ in acks] == list(range(1, 11))
    # not one at a time: the later messages reached the sink while m0 was still being handled
    assert sink.arrived["m9"] < sink.answered["m0"]
    raw.close()


def test_failed_delivery_is_never_acknowledged_and_closes_the_connection(broker, sink):
    raw = broker.raw()
    raw.connect("pipe-fail")
    raw.send(codec.encode_publish(codec.encode_topic("pipe/veh-2/telemetry"), b"fail-1", 1, False, 1))
    with pytest.raises((ConnectionError, OSError)):
        while True:
            ptype, _flags, _body = raw.read(timeout=15)
            assert ptype != codec.PUBACK, "a message whose delivery failed was acknowledged"
    wait_until(lambda: any("event=mqtt.rule_delivery_failed" in line and "clientid=pipe-fail" in line
                           for line in broker.lines))


def test_sigterm_acknowledges_what_is_committing_before_it_closes_the_clients(tmp_path):
    sink = Sink(slow={"slow-at-shutdown": 1.0})
    broker = StandinBroker(tmp_path, extra_conf=RULES.format(port=sink.port, ttl="30s")).start()
    try:
        raw = broker.raw()
        raw.connect("pipe-term")
        raw.send(codec.encode_publish(codec.encode_topic("pipe/veh-3/telemetry"), b"slow-at-shutdown", 1, False, 9))
        wait_until(lambda: "slow-at-shutdown" in sink.arrived)
        broker.process.popen.send_signal(signal.SIGTERM)
        ptype, _flags, body = raw.read(timeout=10)
        assert (ptype, codec.decode_packet_id(body)) == (codec.PUBACK, 9)
        assert "slow-at-shutdown" in sink.answered
        assert raw.closed_by_broker()
        assert broker.process.popen.wait(15) == 0
        broker.process = None
    finally:
        broker.stop()
        sink.close()
