"""MQTT 3.1.1 packet codec (and 3.1, which differs only in the protocol name/level).

Decoding works on whole packets: ``FrameReader.feed`` splits a byte stream into ``(type, flags, body)`` frames
and enforces ``max_packet_size`` from the fixed header alone, before the body is buffered. The ``decode_*``
functions turn one body into values; the ``encode_*`` functions build complete packets as ``bytes``.
Any protocol violation raises ``MalformedPacket`` — the caller closes the connection (MQTT 3.1.1 has no way to
report an error to the client other than closing, except the CONNACK return codes).

Hot-path functions avoid objects they do not need: PUBLISH decodes to a tuple, PUBACK to an int.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

# Packet types (fixed header high nibble).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
CONNACK_ACCEPTED = 0x00
CONNACK_UNACCEPTABLE_PROTOCOL = 0x01
CONNACK_IDENTIFIER_REJECTED = 0x02
CONNACK_SERVER_UNAVAILABLE = 0x03
CONNACK_BAD_CREDENTIALS = 0x04
CONNACK_NOT_AUTHORIZED = 0x05

SUBACK_FAILURE = 0x80
PROTOCOL_LEVELS = {("MQTT", 4), ("MQIsdp", 3)}   # 3.1.1 and 3.1; level 5 (MQTT 5.0) is refused with 0x01

_U16 = struct.Struct("!H")
_pack_u16 = _U16.pack
_unpack_u16_from = _U16.unpack_from


class MalformedPacket(Exception):
    """The peer broke the protocol; close the connection."""


class PacketTooLarge(MalformedPacket):
    """A packet's remaining length exceeds ``max_packet_size`` (EMQX: ``frame_too_large``)."""


class UnsupportedProtocol(Exception):
    """A CONNECT with a protocol name/level this server does not speak (answered with CONNACK 0x01)."""

    def __init__(self, name: str, level: int) -> None:
        super().__init__(f"unsupported protocol {name!r} level {level}")
        self.name = name
        self.level = level


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(slots=True)
class Connect:
    proto_name: str
    proto_ver: int
    clean_session: bool
    keepalive: int
    client_id: str
    will: Will | None
    username: str | None
    password: bytes | None


# -- framing --------------------------------------------------------------------------------------------------

class FrameReader:
    """Incremental splitter of a byte stream into MQTT frames.

    ``feed(data)`` returns a list of ``(packet_type, flags, body)`` for every complete frame; an incomplete tail
    stays buffered. The body is a ``bytes`` object (a copy: frames outlive the buffer).
    """

    __slots__ = ("_buf", "max_packet_size")

    def __init__(self, max_packet_size: int) -> None:
        self._buf = bytearray()
        self.max_packet_size = max_packet_size

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buf = self._buf
        buf += data
        frames = []
        pos = 0
        end = len(buf)
        limit = self.max_packet_size
        while end - pos >= 2:
            first = buf[pos]
            # remaining length: 1 to 4 bytes, 7 bits each, least significant first
            length = 0
            multiplier = 1
            i = pos + 1
            complete = False
            for _ in range(4):
                if i >= end:
                    break
                byte = buf[i]
                i += 1
                length += (byte & 0x7F) * multiplier
                if byte < 0x80:
                    complete = True
                    break
                multiplier <<= 7
            else:
                raise MalformedPacket("remaining length longer than 4 bytes")
            if not complete:
                break                                  # header incomplete
            if length > limit:
                raise PacketTooLarge(f"packet of {length} bytes exceeds max_packet_size {limit}")
            if end - i < length:
                break                                  # body incomplete
            frames.append((first >> 4, first & 0x0F, bytes(buf[i:i + length])))
            pos = i + length
        if pos:
            del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)


def _remaining_length(length: int) -> bytes:
    if length < 128:
        return bytes((length,))
    out = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        if length:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_str(body: bytes, pos: int) -> tuple[str, int]:
    if pos + 2 > len(body):
        raise MalformedPacket("truncated string length")
    (n,) = _unpack_u16_from(body, pos)
    pos += 2
    if pos + n > len(body):
        raise MalformedPacket("truncated string")
    raw = body[pos:pos + n]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPacket("string is not valid UTF-8") from exc
    if "\x00" in text:
        raise MalformedPacket("string contains U+0000")
    return text, pos + n


def _read_bin(body: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 2 > len(body):
        raise MalformedPacket("truncated binary length")
    (n,) = _unpack_u16_from(body, pos)
    pos += 2
    if pos + n > len(body):
        raise MalformedPacket("truncated binary")
    return body[pos:pos + n], pos + n


def _encode_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _pack_u16(len(raw)) + raw


# -- decoding -------------------------------------------------------------------------------------------------

def decode_connect(flags: int, body: bytes) -> Connect:
    """Decode a CONNECT body. Raises UnsupportedProtocol (→ CONNACK 0x01) or MalformedPacket (→ close)."""
    if flags != 0:
        raise MalformedPacket("CONNECT fixed header flags must be 0")
    name, pos = _read_str(body, 0)
    if pos + 4 > len(body):
        raise MalformedPacket("truncated CONNECT variable header")
    level = body[pos]
    cflags = body[pos + 1]
    (keepalive,) = _unpack_u16_from(body, pos + 2)
    pos += 4
    if (name, level) not in PROTOCOL_LEVELS:
        if name in ("MQTT", "MQIsdp"):
            raise UnsupportedProtocol(name, level)
        raise MalformedPacket(f"unknown protocol name {name!r}")
    if cflags & 0x01:
        raise MalformedPacket("CONNECT reserved flag set")
    clean = bool(cflags & 0x02)
    will_flag = bool(cflags & 0x04)
    will_qos = (cflags >> 3) & 0x03
    will_retain = bool(cflags & 0x20)
    has_password = bool(cflags & 0x40)
    has_username = bool(cflags & 0x80)
    if will_qos == 3:
        raise MalformedPacket("will QoS 3")
    if not will_flag and (will_qos or will_retain):
        raise MalformedPacket("will QoS/retain set without will flag")
    if has_password and not has_username and level == 4:
        raise MalformedPacket("password flag without username flag")
    client_id, pos = _read_str(body, pos)
    will = None
    if will_flag:
        will_topic, pos = _read_str(body, pos)
        will_payload, pos = _read_bin(body, pos)
        will = Will(will_topic, will_payload, will_qos, will_retain)
    username = password = None
    if has_username:
        username, pos = _read_str(body, pos)
    if has_password:
        password, pos = _read_bin(body, pos)
    if pos != len(body):
        raise MalformedPacket("trailing bytes after CONNECT payload")
    return Connect(name, level, clean, keepalive, client_id, will, username, password)


def decode_publish(flags: int, body: bytes) -> tuple[str, int, int, bool, bool, bytes]:
    """→ (topic, qos, packet_id (0 for QoS 0), retain, dup, payload)."""
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH QoS 3")
    topic, pos = _read_str(body, 0)
    packet_id = 0
    if qos:
        if pos + 2 > len(body):
            raise MalformedPacket("truncated packet id")
        (packet_id,) = _unpack_u16_from(body, pos)
        pos += 2
        if packet_id == 0:
            raise MalformedPacket("packet id 0")
    elif flags & 0x08:
        raise MalformedPacket("DUP set on a QoS 0 PUBLISH")
    return topic, qos, packet_id, bool(flags & 0x01), bool(flags & 0x08), body[pos:]


def decode_packet_id(body: bytes) -> int:
    """PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK: just a packet id."""
    if len(body) != 2:
        raise MalformedPacket("expected a 2-byte packet id")
    return _unpack_u16_from(body, 0)[0]


def decode_subscribe(flags: int, body: bytes) -> tuple[int, list[tuple[str, int]]]:
    """→ (packet_id, [(filter, requested_qos), …])."""
    if flags != 0x02:
        raise MalformedPacket("SUBSCRIBE fixed header flags must be 0b0010")
    if len(body) < 2:
        raise MalformedPacket("truncated SUBSCRIBE")
    (packet_id,) = _unpack_u16_from(body, 0)
    pos = 2
    requests = []
    while pos < len(body):
        topic_filter, pos = _read_str(body, pos)
        if pos >= len(body):
            raise MalformedPacket("missing requested QoS")
        qos = body[pos]
        pos += 1
        if qos > 2:
            raise MalformedPacket("bad requested QoS byte")
        requests.append((topic_filter, qos))
    if not requests:
        raise MalformedPacket("SUBSCRIBE without topic filters")
    return packet_id, requests


def decode_unsubscribe(flags: int, body: bytes) -> tuple[int, list[str]]:
    if flags != 0x02:
        raise MalformedPacket("UNSUBSCRIBE fixed header flags must be 0b0010")
    if len(body) < 2:
        raise MalformedPacket("truncated UNSUBSCRIBE")
    (packet_id,) = _unpack_u16_from(body, 0)
    pos = 2
    filters = []
    while pos < len(body):
        topic_filter, pos = _read_str(body, pos)
        filters.append(topic_filter)
    if not filters:
        raise MalformedPacket("UNSUBSCRIBE without topic filters")
    return packet_id, filters


# -- encoding -------------------------------------------------------------------------------------------------

def encode_connack(session_present: bool, return_code: int) -> bytes:
    return bytes((CONNACK << 4, 2, 1 if session_present and return_code == 0 else 0, return_code))


_ACK_HEADERS = {PUBACK: PUBACK << 4, PUBREC: PUBREC << 4, PUBREL: (PUBREL << 4) | 0x02, PUBCOMP: PUBCOMP << 4,
                UNSUBACK: UNSUBACK << 4}


def encode_ack(packet_type: int, packet_id: int) -> bytes:
    return bytes((_ACK_HEADERS[packet_type], 2, packet_id >> 8, packet_id & 0xFF))


def encode_puback(packet_id: int) -> bytes:
    return bytes((0x40, 2, packet_id >> 8, packet_id & 0xFF))


def encode_suback(packet_id: int, return_codes: list[int]) -> bytes:
    body = _pack_u16(packet_id) + bytes(return_codes)
    return bytes((SUBACK << 4,)) + _remaining_length(len(body)) + body


PINGRESP_PACKET = bytes((PINGRESP << 4, 0))
PINGREQ_PACKET = bytes((PINGREQ << 4, 0))
DISCONNECT_PACKET = bytes((DISCONNECT << 4, 0))


def encode_publish(topic: bytes, payload: bytes, qos: int, retain: bool, packet_id: int = 0,
                   dup: bool = False) -> bytes:
    """``topic`` is the already length-prefixed UTF-8 topic (``encode_topic``), so it is encoded once per message."""
    first = (PUBLISH << 4) | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    if qos:
        length = len(topic) + 2 + len(payload)
        return b"".join((bytes((first,)), _remaining_length(length), topic, _pack_u16(packet_id), payload))
    length = len(topic) + len(payload)
    return b"".join((bytes((first,)), _remaining_length(length), topic, payload))


def encode_topic(topic: str) -> bytes:
    return _encode_str(topic)


def encode_connect(client_id: str, *, clean_session: bool = True, keepalive: int = 60,
                   username: str | None = None, password: bytes | None = None, will: Will | None = None,
                   proto_name: str = "MQTT", proto_ver: int = 4) -> bytes:
    """Build a CONNECT (used by tests and probes that need exact bytes, e.g. an MQTT 5 CONNECT)."""
    flags = 0x02 if clean_session else 0
    payload = _encode_str(client_id)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += _encode_str(will.topic) + _pack_u16(len(will.payload)) + will.payload
    if username is not None:
        flags |= 0x80
        payload += _encode_str(username)
    if password is not None:
        flags |= 0x40
        payload += _pack_u16(len(password)) + password
    variable = _encode_str(proto_name) + bytes((proto_ver, flags)) + _pack_u16(keepalive)
    if proto_ver == 5:
        variable += b"\x00"      # empty MQTT 5 properties
    body = variable + payload
    return bytes((CONNECT << 4,)) + _remaining_length(len(body)) + body


def encode_subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    body = _pack_u16(packet_id) + b"".join(_encode_str(f) + bytes((q,)) for f, q in filters)
    return bytes(((SUBSCRIBE << 4) | 0x02,)) + _remaining_length(len(body)) + body
