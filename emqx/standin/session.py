"""An MQTT session: subscriptions, outbound QoS 1/2 in flight, and the queue of messages waiting for room.

A session outlives its connection when the client connected with clean_session = false (until
``mqtt.session_expiry_interval``); then messages routed to it are queued (at most ``max_mqueue_len``, the oldest
is dropped first, as EMQX's mqueue does) and delivered on reconnect, after the unacknowledged in-flight ones are
resent with DUP set (MQTT-4.4.0-1).

Outbound flow control is ``mqtt.max_inflight`` unacknowledged QoS 1/2 messages per session; the rest wait in the
queue. Unacknowledged messages are resent after ``mqtt.retry_interval`` (see ``Broker._retry_loop``).

A session writes to its client through ``ClientConnection`` — what sessions and the broker need of a network
connection (``connection.Connection`` is the one implementation), so neither imports the connection module.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Protocol

from .clientinfo import ClientInfo
from .mqtt import codec

# A connected subscriber whose socket has this many unsent bytes gets no more QoS 0 messages until it catches
# up (QoS 1/2 are bounded by max_inflight and the queue instead): a slow reader cannot exhaust memory.
MAX_WRITE_BACKLOG = 16 * 1024 * 1024

# in-flight entry states
AWAIT_PUBACK = 0        # QoS 1 sent, waiting for PUBACK
AWAIT_PUBREC = 1        # QoS 2 sent, waiting for PUBREC
AWAIT_PUBCOMP = 2       # QoS 2 PUBREL sent, waiting for PUBCOMP


class ClientConnection(Protocol):
    """A client's network connection as its session and the broker see it."""

    @property
    def open(self) -> bool:
        """CONNACK sent and not closed: deliveries may be written."""
        ...

    @property
    def closed(self) -> bool: ...

    @property
    def busy(self) -> bool:
        """Messages were read that are not yet committed and acknowledged."""
        ...

    @property
    def peerhost(self) -> str: ...

    @property
    def peerport(self) -> int: ...

    @property
    def recv_msg(self) -> int: ...

    def send(self, data: bytes) -> None: ...

    def write_backlog(self) -> int:
        """Bytes written but not yet sent to the peer."""
        ...

    def pause_reading(self) -> None: ...

    def close(self, reason: str) -> asyncio.Task[None] | None:
        """Close (idempotent); returns the task publishing the Last Will, if any."""
        ...


class InflightMessage:
    """An outbound QoS 1/2 message waiting for its acknowledgement."""

    __slots__ = ("state", "topic", "payload", "qos", "sent_at")

    def __init__(self, state: int, topic: bytes, payload: bytes, qos: int, sent_at: float) -> None:
        self.state = state              # AWAIT_PUBACK | AWAIT_PUBREC | AWAIT_PUBCOMP
        self.topic = topic              # encoded, as it goes on the wire
        self.payload = payload
        self.qos = qos
        self.sent_at = sent_at          # time.monotonic() of the last (re)send


class Session:
    __slots__ = ("clientid", "clean", "subscriptions", "conn", "inflight", "mqueue", "max_inflight",
                 "max_mqueue_len", "next_pid", "expiry_handle", "created_at", "disconnected_at",
                 "awaiting_rel", "dropped", "delivered", "client", "connected_at")

    def __init__(self, clientid: str, clean: bool, max_inflight: int, max_mqueue_len: int) -> None:
        self.clientid = clientid
        self.clean = clean
        self.subscriptions: dict[str, int] = {}
        self.conn: ClientConnection | None = None
        self.inflight: dict[int, InflightMessage] = {}          # by packet id
        # waiting messages: (topic_bytes, payload, qos, retain)
        self.mqueue: deque[tuple[bytes, bytes, int, bool]] = deque()
        self.max_inflight = max_inflight
        self.max_mqueue_len = max_mqueue_len
        self.next_pid = 1
        self.expiry_handle: asyncio.TimerHandle | None = None
        self.created_at = int(time.time() * 1000)
        self.disconnected_at: int | None = None
        self.connected_at = 0
        self.awaiting_rel: set[int] = set()     # inbound QoS 2 packet ids between PUBREC and PUBREL
        self.dropped = 0
        self.delivered = 0
        self.client: ClientInfo | None = None    # of the last connection

    # -- outbound ---------------------------------------------------------------------------------------------
    def _alloc_pid(self) -> int:
        pid = self.next_pid
        inflight = self.inflight
        while pid in inflight:
            pid = pid + 1 if pid < 65535 else 1
        self.next_pid = pid + 1 if pid < 65535 else 1
        return pid

    def deliver(self, topic_b: bytes, payload: bytes, qos: int, retain: bool = False) -> None:
        """Send now if connected and there is room, else queue."""
        conn = self.conn
        if conn is not None and conn.open:
            if qos == 0:
                if conn.write_backlog() > MAX_WRITE_BACKLOG:
                    self.dropped += 1
                    return
                self.delivered += 1
                conn.send(codec.encode_publish(topic_b, payload, 0, retain))
                return
            if len(self.inflight) < self.max_inflight and not self.mqueue:
                self._send_inflight(conn, topic_b, payload, qos, retain)
                return
        self._enqueue(topic_b, payload, qos, retain)

    def _send_inflight(self, conn: ClientConnection, topic_b: bytes, payload: bytes, qos: int,
                       retain: bool) -> None:
        pid = self._alloc_pid()
        self.inflight[pid] = InflightMessage(AWAIT_PUBACK if qos == 1 else AWAIT_PUBREC, topic_b, payload, qos,
                                             time.monotonic())
        self.delivered += 1
        conn.send(codec.encode_publish(topic_b, payload, qos, retain, pid))

    def _enqueue(self, topic_b: bytes, payload: bytes, qos: int, retain: bool) -> None:
        if self.max_mqueue_len <= 0:
            self.dropped += 1
            return
        if len(self.mqueue) >= self.max_mqueue_len:
            self.mqueue.popleft()
            self.dropped += 1
        self.mqueue.append((topic_b, payload, qos, retain))

    def drain(self) -> None:
        """Move queued messages to the connection while there is room in flight."""
        conn = self.conn
        if conn is None or not conn.open:
            return
        mqueue = self.mqueue
        while mqueue and len(self.inflight) < self.max_inflight:
            topic_b, payload, qos, retain = mqueue.popleft()
            if qos == 0:
                self.delivered += 1
                conn.send(codec.encode_publish(topic_b, payload, 0, retain))
            else:
                self._send_inflight(conn, topic_b, payload, qos, retain)

    def resend_inflight(self, older_than: float | None = None) -> int:
        """Resend unacknowledged messages (DUP) — all of them on resume, or those older than a cutoff on retry."""
        conn = self.conn
        if conn is None or not conn.open:
            return 0
        count = 0
        now = time.monotonic()
        for pid, entry in self.inflight.items():
            if older_than is not None and entry.sent_at > older_than:
                continue
            if entry.state == AWAIT_PUBCOMP:
                conn.send(codec.encode_ack(codec.PUBREL, pid))
            else:
                conn.send(codec.encode_publish(entry.topic, entry.payload, entry.qos, False, pid, dup=True))
            entry.sent_at = now
            count += 1
        return count

    def on_puback(self, pid: int) -> None:
        entry = self.inflight.get(pid)
        if entry is not None and entry.state == AWAIT_PUBACK:
            del self.inflight[pid]
            if self.mqueue:
                self.drain()

    def on_pubrec(self, pid: int) -> None:
        entry = self.inflight.get(pid)
        if entry is not None and entry.state in (AWAIT_PUBREC, AWAIT_PUBCOMP):
            entry.state = AWAIT_PUBCOMP
            entry.sent_at = time.monotonic()
        if self.conn is not None:
            # answer even an unknown id (MQTT-4.3.3: PUBREL must follow PUBREC)
            self.conn.send(codec.encode_ack(codec.PUBREL, pid))

    def on_pubcomp(self, pid: int) -> None:
        entry = self.inflight.get(pid)
        if entry is not None and entry.state == AWAIT_PUBCOMP:
            del self.inflight[pid]
            if self.mqueue:
                self.drain()

    # -- info -------------------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.conn is not None and self.conn.open
