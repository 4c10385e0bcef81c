"""The stand-in broker as a real subprocess for the broker tests, and a raw-socket MQTT client.

``StandinBroker`` writes a legitimate EMQX configuration (by default: no authenticator = everyone may connect,
authorization with no sources and ``no_match = allow``, no rules — what EMQX itself does with that file), starts
``python -m emqx.standin --config FILE`` exactly as the embedded stack does (``EMQX_*`` overrides allowed), and
waits for ``GET /status``. ``RawMqtt`` speaks bytes for the cases paho cannot produce (MQTT 5 CONNECT, silence
after CONNECT, oversized packets, reading the exact order of PUBACKs).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from emqx.standin.mqtt import codec
from fleetcore import paths
from fleetctl.ports import free_port
from fleetctl.procs import ChildProcess
from tests.support.waiting import wait_until

API_KEY, API_SECRET = "test-key", "test-secret-0123456789"

ALLOW_ALL = """
authentication = []
authorization {
  no_match = allow
  deny_action = ignore
  sources = []
}
"""



def make_certs(directory: Path) -> Path:
    """CA + server certificate for 127.0.0.1 with the project's script; returns the directory."""
    subprocess.run(["sh", str(paths.PROJECT_ROOT / "scripts" / "make-certs.sh"), str(directory)], check=True,
                   capture_output=True)
    return directory


class StandinBroker:
    def __init__(self, workdir: Path, *, extra_conf: str = "", auth_conf: str = ALLOW_ALL,
                 env: dict[str, str] | None = None, certs: Path | None = None, conf_file: Path | None = None,
                 ) -> None:
        """``conf_file``: run that configuration as it is, with only the addresses, the data directory and the
        API key file overridden by EMQX_* variables (instead of writing one from ``auth_conf``/``extra_conf``)."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.mqtt_port, self.ws_port, self.api_port = free_port(), free_port(), free_port()
        self.tls_port = free_port() if certs else None
        self.certs = certs
        keys = workdir / "api_keys.txt"
        keys.write_text(f"{API_KEY}:{API_SECRET}:administrator\nviewer-key:viewer-secret:viewer\n")
        ssl_block = "listeners.ssl.default { enable = false }"
        if certs:
            ssl_block = f"""listeners.ssl.default {{
  bind = "127.0.0.1:{self.tls_port}"
  ssl_options {{
    cacertfile = "{certs / 'ca.pem'}"
    certfile = "{certs / 'server.pem'}"
    keyfile = "{certs / 'server.key'}"
    verify = verify_none
    versions = ["tlsv1.3", "tlsv1.2"]
  }}
}}"""
        self.conf_path = workdir / "emqx.conf"
        self.conf_path.write_text(f"""
node {{ name = "emqx@127.0.0.1", cookie = "test-cookie", data_dir = "{workdir}" }}
dashboard {{ listeners.http.bind = "127.0.0.1:{self.api_port}" }}
api_key {{ bootstrap_file = "{keys}" }}
listeners.tcp.default {{ bind = "127.0.0.1:{self.mqtt_port}", max_connections = 1000 }}
listeners.ws.default {{ bind = "127.0.0.1:{self.ws_port}", websocket.mqtt_path = "/mqtt" }}
listeners.wss.default {{ enable = false }}
{ssl_block}
mqtt {{
  max_packet_size = "1MB"
  session_expiry_interval = "2h"
  max_mqueue_len = 1000
  max_inflight = 32
  retry_interval = "30s"
  keepalive_multiplier = 1.5
  idle_timeout = "15s"
}}
{auth_conf}
{extra_conf}
""")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EMQX_")}
        self.env.update({"PYTHONUNBUFFERED": "1", "FLEET_LOG_LEVEL": "INFO"})
        if conf_file is not None:
            self.conf_path = conf_file
            self.env.update({
                "EMQX_LISTENERS__TCP__DEFAULT__BIND": f'"127.0.0.1:{self.mqtt_port}"',       # quoted: HOCON
                "EMQX_DASHBOARD__LISTENERS__HTTP__BIND": f'"127.0.0.1:{self.api_port}"',
                "EMQX_NODE__DATA_DIR": str(workdir),
                "EMQX_API_KEY__BOOTSTRAP_FILE": str(keys),
            })
        self.env.update(env or {})
        self.process: ChildProcess | None = None
        self.lines: list[str] = []

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, timeout: float = 20.0) -> StandinBroker:
        self.process = ChildProcess("broker", [sys.executable, "-m", "emqx.standin", "--config", str(self.conf_path)],
                                    env=self.env, cwd=paths.PROJECT_ROOT,
                                    on_line=lambda _name, line: self.lines.append(line))
        self.process.start()

        def up() -> bool:
            if not self.process.running():
                raise AssertionError(f"broker exited with {self.process.poll()}:\n{self.process.last_lines(30)}")
            return self.http("GET", "/status", auth=False)[0] == 200
        wait_until(up, timeout, message=lambda: "broker not healthy:\n" + self.process.last_lines(30))
        return self

    def stop(self) -> int | None:
        if self.process is None:
            return None
        code = self.process.stop(timeout=15)
        self.process = None
        return code

    def terminate_and_wait(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit code (the graceful-shutdown path)."""
        popen = self.process.popen
        popen.send_signal(signal.SIGTERM)
        code = popen.wait(timeout)
        self.process.pump.join(2)
        self.process = None
        return code

    def log_events(self, event: str) -> list[str]:
        return [line for line in self.lines if f"event={event}" in line]

    # -- REST ---------------------------------------------------------------------------------------------------
    def http(self, method: str, path: str, body: Any = None, *, auth: bool | tuple[str, str] = True,
             ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.api_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if auth:
            key, secret = (API_KEY, API_SECRET) if auth is True else auth
            request.add_header("Authorization", "Basic " + b64encode(f"{key}:{secret}".encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, _decode(response.read(), response.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as error:
            return error.code, _decode(error.read(), error.headers.get("Content-Type", ""))
        except (urllib.error.URLError, OSError):
            return 0, None

    def publish(self, topic: str, payload: str, qos: int = 1, retain: bool = False) -> tuple[int, Any]:
        return self.http("POST", "/api/v5/publish", {"topic": topic, "payload": payload, "qos": qos,
                                                     "retain": retain})

    # -- clients ------------------------------------------------------------------------------------------------
    def client(self, client_id: str, **kwargs: Any) -> PahoClient:
        return PahoClient("127.0.0.1", self.mqtt_port, client_id, **kwargs)

    def raw(self) -> RawMqtt:
        return RawMqtt("127.0.0.1", self.mqtt_port)


def _decode(raw: bytes, content_type: str) -> Any:
    if "json" in content_type and raw:
        return json.loads(raw)
    return raw.decode("utf-8", "replace")


class PahoClient:
    """A paho-mqtt 2.x MQTT 3.1.1 client that records everything it receives and every disconnect."""

    def __init__(self, host: str, port: int, client_id: str, *, clean_session: bool = True,
                 transport: str = "tcp", keepalive: int = 30, username: str | None = None,
                 password: str | None = None, will: tuple[str, bytes, int, bool] | None = None,
                 tls_ca: str | None = None, ws_path: str = "/mqtt") -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.disconnects: list[Any] = []
        self.connack: Any = None
        self.session_present: bool | None = None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                             protocol=mqtt.MQTTv311, transport=transport)
        if transport == "websockets":
            client.ws_set_options(path=ws_path)
        if username is not None:
            client.username_pw_set(username, password)
        if will:
            client.will_set(will[0], will[1], qos=will[2], retain=will[3])
        if tls_ca:
            client.tls_set(ca_certs=tls_ca)
        client.reconnect_delay_set(60, 120)
        client.on_connect = self._on_connect
        client.on_message = lambda _c, _u, message: self.messages.append(message)
        client.on_disconnect = lambda _c, _u, _f, reason, _p: self.disconnects.append(reason)
        self.client = client
        self.host, self.port, self.keepalive = host, port, keepalive

    def _on_connect(self, _client, _userdata, flags, reason_code, _properties) -> None:
        self.connack = reason_code
        self.session_present = flags.session_present

    def connect(self, timeout: float = 10.0, expect_success: bool = True) -> PahoClient:
        self.client.connect(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        wait_until(lambda: self.connack is not None, timeout, message="no CONNACK")
        if expect_success:
            assert not self.connack.is_failure, f"CONNACK {self.connack}"
        return self

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        granted: list[Any] = []
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: granted.extend(codes)
        result, _mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        wait_until(lambda: granted, 10, message=f"no SUBACK for {topic}")
        return [code.value for code in granted]

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                wait: bool = True) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if wait and qos:
            info.wait_for_publish(10)
            assert info.is_published()
        return info

    def received(self, topic: str | None = None) -> list[mqtt.MQTTMessage]:
        return [m for m in list(self.messages) if topic is None or m.topic == topic]

    def wait_for(self, topic: str, count: int = 1, timeout: float = 10.0) -> list[mqtt.MQTTMessage]:
        return wait_until(lambda: self.received(topic) if len(self.received(topic)) >= count else None, timeout,
                          message=f"fewer than {count} message(s) on {topic}")

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT (an abnormal disconnect for the broker)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    @property
    def is_connected(self) -> bool:
        return self.client.is_connected()


class RawMqtt:
    """MQTT over a plain socket, packet by packet."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.reader = codec.FrameReader(64 * 1024 * 1024)
        self.frames: list[tuple[int, int, bytes]] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, client_id: str, **kwargs: Any) -> tuple[bool, int]:
        self.send(codec.encode_connect(client_id, **kwargs))
        ptype, _flags, body = self.read()
        assert ptype == codec.CONNACK, ptype
        return bool(body[0] & 1), body[1]

    def read(self, timeout: float = 10.0) -> tuple[int, int, bytes]:
        """The next packet; raises ConnectionError when the broker closed the connection."""
        deadline = time.monotonic() + timeout
        while not self.frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no packet")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no packet") from None
            if not data:
                raise ConnectionError("closed by broker")
            self.frames.extend(self.reader.feed(data))
        return self.frames.pop(0)

    def closed_by_broker(self, timeout: float = 10.0) -> bool:
        """True once the broker has closed the connection (packets still arriving are skipped)."""
        try:
            while True:
                self.read(timeout)
        except TimeoutError:
            return False
        except (ConnectionError, OSError):
            return True

    def close(self) -> None:
        self.sock.close()
