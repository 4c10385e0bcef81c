"""A small MQTT 3.1.1 client of the interoperability suite's own, independent of the stand-in's codec.

It offers what the Eclipse Paho interoperability test client (paho.mqtt.testing, ``mqtt/clients/V311.py``) offers
its test cases, so the cases in paho_cases.py read like the originals: ``connect`` with will, keepalive, clean
session, a chosen protocol name and — to provoke a protocol error — a second CONNECT on the same socket;
``subscribe``/``unsubscribe``/``publish`` that return once the broker acknowledged; ``disconnect``;
``terminate`` (the socket closes without DISCONNECT); ``pause``/``resume`` (incoming PUBLISH packets are
neither acknowledged nor recorded, so the broker must redeliver them). What arrives is recorded in
``Callbacks``, like the Paho test's callback object. It never sends PINGREQ: keepalive expiry is for the broker.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT = 8, 9, 10, 11, 14


class MqttClientError(Exception):
    """The broker refused, closed the connection, or did not answer in time."""


class Connack(NamedTuple):
    flags: int            # bit 0: session present
    return_code: int


class Message(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retained: bool
    dup: bool


@dataclass
class Callbacks:
    messages: list[Message] = field(default_factory=list)
    subscribeds: list[tuple[int, list[int]]] = field(default_factory=list)   # (packet id, granted QoS / 0x80)
    unsubscribeds: list[int] = field(default_factory=list)

    def clear(self) -> None:
        self.messages.clear()
        self.subscribeds.clear()
        self.unsubscribeds.clear()


def _utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def _packet(ptype: int, flags: int, body: bytes) -> bytes:
    length, header = len(body), bytearray()
    while True:
        byte, length = length % 128, length // 128
        header.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([ptype << 4 | flags]) + bytes(header) + body


class Client:
    def __init__(self, clientid: str, callbacks: Callbacks | None = None, timeout: float = 10.0) -> None:
        self.clientid = clientid
        self.callbacks = callbacks or Callbacks()
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._acks: dict[tuple[int, int], bytes] = {}      # (packet type, packet id or 0) → body
        self._closed = True
        self._paused = False
        self._next_id = 0
        self._qos2_in: set[int] = set()                     # inbound QoS 2 ids between PUBLISH and PUBREL

    # -- connection -----------------------------------------------------------------------------------------
    def connect(self, host: str, port: int, *, cleansession: bool = True, keepalive: int = 0,
                will: tuple[str, bytes, int, bool] | None = None, protocol_name: str = "MQTT",
                newsocket: bool = True) -> Connack:
        """CONNECT and wait for CONNACK; raises MqttClientError unless the broker accepts (return code 0)."""
        if newsocket:
            self.terminate()
            self.sock = socket.create_connection((host, port), timeout=self.timeout)
            self.sock.settimeout(None)
            with self._cond:
                self._closed = False
                self._acks.clear()
            self._qos2_in.clear()
            self._reader = threading.Thread(target=self._read_loop, args=(self.sock,), daemon=True,
                                            name=f"mqtt-{self.clientid or 'anonymous'}")
            self._reader.start()
        flags = 0x02 if cleansession else 0
        payload = _utf8(self.clientid)
        if will is not None:
            topic, message, qos, retain = will
            flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
            payload += _utf8(topic) + struct.pack("!H", len(message)) + message
        body = _utf8(protocol_name) + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
        self._send(_packet(CONNECT, 0, body))
        ack = self._wait((CONNACK, 0))
        connack = Connack(ack[0], ack[1])
        if connack.return_code != 0:
            raise MqttClientError(f"CONNACK return code {connack.return_code}")
        return connack

    def disconnect(self) -> None:
        """DISCONNECT, then close the socket (the broker discards the Last Will)."""
        if self.sock is not None and not self._closed:
            self._send(_packet(DISCONNECT, 0, b""))
        self.terminate()

    def terminate(self) -> None:
        """Close the socket without DISCONNECT (an abnormal end: the broker publishes the Last Will)."""
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._reader is not None:
            self._reader.join(self.timeout)
            self._reader = None

    def pause(self) -> None:
        """Stop answering incoming PUBLISH packets (and stop recording them) until ``resume``."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    # -- requests -------------------------------------------------------------------------------------------
    def subscribe(self, topic_filters: list[str], qoss: list[int]) -> list[int]:
        pid = self._packet_id()
        body = struct.pack("!H", pid) + b"".join(_utf8(t) + bytes([q])
                                                for t, q in zip(topic_filters, qoss, strict=True))
        self._send(_packet(SUBSCRIBE, 0x02, body))
        codes = list(self._wait((SUBACK, pid))[2:])
        self.callbacks.subscribeds.append((pid, codes))
        return codes

    def unsubscribe(self, topic_filters: list[str]) -> None:
        pid = self._packet_id()
        self._send(_packet(UNSUBSCRIBE, 0x02, struct.pack("!H", pid) + b"".join(_utf8(t) for t in topic_filters)))
        self._wait((UNSUBACK, pid))
        self.callbacks.unsubscribeds.append(pid)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retained: bool = False) -> None:
        """PUBLISH; returns after PUBACK (QoS 1) or PUBCOMP (QoS 2)."""
        pid = self._packet_id() if qos else 0
        body = _utf8(topic) + (struct.pack("!H", pid) if qos else b"") + payload
        self._send(_packet(PUBLISH, qos << 1 | (1 if retained else 0), body))
        if qos == 1:
            self._wait((PUBACK, pid))
        elif qos == 2:
            self._wait((PUBREC, pid))
            self._send(_packet(PUBREL, 0x02, struct.pack("!H", pid)))
            self._wait((PUBCOMP, pid))

    # -- internals ------------------------------------------------------------------------------------------
    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _send(self, data: bytes) -> None:
        if self.sock is None:
            raise MqttClientError("not connected")
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise MqttClientError(f"send failed: {exc}") from None

    def _wait(self, key: tuple[int, int]) -> bytes:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while key not in self._acks:
                remaining = deadline - time.monotonic()
                if self._closed:
                    raise MqttClientError("connection closed by the broker")
                if remaining <= 0:
                    raise MqttClientError(f"no answer to packet type {key[0] - 1}")
                self._cond.wait(remaining)
            return self._acks.pop(key)

    def _read_loop(self, sock: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                buffer += data
                while (frame := _split_frame(buffer)) is not None:
                    ptype, flags, body, buffer = frame
                    self._handle(sock, ptype, flags, body)
        except OSError:
            pass
        finally:
            with self._cond:
                if self.sock is None or self.sock is sock:
                    self._closed = True
                self._cond.notify_all()

    def _handle(self, sock: socket.socket, ptype: int, flags: int, body: bytes) -> None:
        if ptype == PUBLISH:
            if self._paused:
                return
            qos = flags >> 1 & 3
            (tlen,) = struct.unpack_from("!H", body)
            topic = body[2:2 + tlen].decode("utf-8")
            rest = body[2 + tlen:]
            message = Message(topic, rest[2:] if qos else rest, qos, bool(flags & 1), bool(flags & 8))
            if qos == 0:
                self.callbacks.messages.append(message)
                return
            (pid,) = struct.unpack_from("!H", rest)
            if qos == 1:
                self.callbacks.messages.append(message)
                sock.sendall(_packet(PUBACK, 0, struct.pack("!H", pid)))
            else:              # exactly once: recorded when first seen (in arrival order), not again until PUBREL
                if pid not in self._qos2_in:
                    self._qos2_in.add(pid)
                    self.callbacks.messages.append(message)
                sock.sendall(_packet(PUBREC, 0, struct.pack("!H", pid)))
        elif ptype == PUBREL:
            (pid,) = struct.unpack_from("!H", body)
            self._qos2_in.discard(pid)
            sock.sendall(_packet(PUBCOMP, 0, struct.pack("!H", pid)))
        else:
            pid = 0 if ptype == CONNACK else struct.unpack_from("!H", body)[0]
            with self._cond:
                self._acks[(ptype, pid)] = body
                self._cond.notify_all()


def _split_frame(buffer: bytes) -> tuple[int, int, bytes, bytes] | None:
    """(type, flags, body, rest) of the first complete packet in ``buffer``, or None if it is incomplete."""
    if len(buffer) < 2:
        return None
    length, multiplier, index = 0, 1, 1
    while True:
        if index >= len(buffer):
            return None
        byte = buffer[index]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        index += 1
        if not byte & 0x80:
            break
    if len(buffer) < index + length:
        return None
    return buffer[0] >> 4, buffer[0] & 0x0F, buffer[index:index + length], buffer[index + length:]
