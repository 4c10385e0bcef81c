"""The MQTT 3.1.1 server: connections, sessions, routing, and the EMQX touch points (authn, authz, rules, events).

One ``Connection`` per network connection, independent of the transport (TCP, TLS, WebSocket — see
``listeners``): the transport hands it bytes and it writes bytes back through ``transport.write``.

Inbound PUBLISH path (per connection, never blocking the socket reader):

    frames ─► inbound FIFO ─► processor task: authorize → route → start RuleEngine.on_publish (a task)
                                                                    │
    PUBACK/PUBREC written in PUBLISH order  ◄── ack FIFO ◄──────────┘ (an ack leaves only when its rules are done)

so a QoS 1 PUBACK means every rule action for that message has committed (ack after commit), acks keep the
order of the PUBLISHes (MQTT-4.6.0-2), and many messages of one client are committed concurrently (batched by
the rule engine). When inbound + pending acks reach ``PIPELINE_LIMIT`` the transport stops reading: a slow
database slows the client down instead of growing memory.

EMQX behaviours copied here (emqx-facts, EMQX emqx_channel.erl): a second CONNECT with the same client id closes
the first connection (disconnect reason ``takenover`` when the session is resumed, ``discarded`` when the new
connection is clean); for MQTT 3.1.1 the Last Will is published on every close except a DISCONNECT packet —
also on takeover, discard and kick, as EMQX does for v3 — and only if the client may publish to its topic
(authorized at publish time); rules also see wills and messages published through the REST API.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import deque
from typing import Any

from fleetcore.logs import log_event

from .clientinfo import ClientInfo, Message
from .mqtt import codec
from .retained import RetainedStore
from .session import Session
from .topics import SubscriptionTrie, valid_topic_filter, valid_topic_name

log = logging.getLogger("emqx.standin.broker")

# Inbound messages + unsent acks per connection before the socket stops being read.
PIPELINE_LIMIT = 256

IDLE, CONNECTING, CONNECTED, CLOSED = 0, 1, 2, 3
_PUBLISH, _SUBSCRIBE, _UNSUBSCRIBE = codec.PUBLISH, codec.SUBSCRIBE, codec.UNSUBSCRIBE

_CONNACK_FOR_REASON = {"bad_username_or_password": codec.CONNACK_BAD_CREDENTIALS}


def now_ms() -> int:
    return int(time.time() * 1000)


class Connection:
    """One MQTT network connection (protocol state machine + inbound pipeline)."""

    def __init__(self, broker: Broker, transport: Any, listener_id: str, peer: tuple[str, int],
                 sock: tuple[str, int], closed_reason: str = "tcp_closed") -> None:
        self.broker = broker
        self.transport = transport
        self.listener_id = listener_id
        self.peerhost, self.peerport = peer[0], peer[1]
        self.sockname = sock
        self.closed_reason = closed_reason
        self.state = IDLE
        self.open = False                     # CONNACK sent and not closed: deliveries may be written
        self.client: ClientInfo | None = None
        self.session: Session | None = None
        self.will: codec.Will | None = None
        self.reader = codec.FrameReader(broker.mqtt.max_packet_size)
        self._loop = broker.loop
        self._out: list[bytes] = []
        self._flush_pending = False
        self._early: list[tuple[int, int, bytes]] = []
        self._inbound: deque = deque()
        self._acks: deque = deque()
        self._processor: asyncio.Task | None = None
        self._paused = False
        self._last_recv = self._loop.time()
        self._ka_timeout = 0.0
        self._ka_handle: asyncio.TimerHandle | None = None
        self._idle_handle: asyncio.TimerHandle | None = self._loop.call_later(
            broker.mqtt.idle_timeout_s, self._idle_timeout)
        self.recv_msg = 0
        self.send_msg = 0
        broker.connection_count += 1

    # -- transport callbacks ----------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        self._last_recv = self._loop.time()
        try:
            frames = self.reader.feed(data)
        except codec.PacketTooLarge as exc:
            log_event(log, "mqtt.frame_too_large", logging.WARNING, clientid=self._clientid(), error=str(exc))
            self.close("frame_too_large")
            return
        except codec.MalformedPacket as exc:
            self._protocol_error(str(exc))
            return
        self.broker.metrics["packets.received"] += len(frames)
        for ptype, flags, body in frames:
            if self.state == CONNECTED:
                self._dispatch(ptype, flags, body)
            elif self.state == IDLE:
                if ptype != codec.CONNECT:
                    self._protocol_error("first packet is not CONNECT")
                    return
                self.state = CONNECTING
                if self._idle_handle is not None:
                    self._idle_handle.cancel()
                    self._idle_handle = None
                self._loop.create_task(self._connect(flags, body))
            elif self.state == CONNECTING:
                self._early.append((ptype, flags, body))
            else:
                return
        if self.state != CLOSED and len(self._inbound) + len(self._acks) >= PIPELINE_LIMIT and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def connection_lost(self) -> None:
        self.close(self.closed_reason)

    # -- output -----------------------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue bytes; everything queued in one event-loop iteration goes out in one write."""
        self._out.append(data)
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def write_backlog(self) -> int:
        """Bytes written but not yet sent to the peer (slow-consumer protection)."""
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def _flush(self) -> None:
        self._flush_pending = False
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        self.broker.metrics["packets.sent"] += len(out)
        out.clear()
        if self.transport is not None:
            self.transport.write(data)

    # -- CONNECT ----------------------------------------------------------------------------------------------
    async def _connect(self, flags: int, body: bytes) -> None:
        broker = self.broker
        try:
            packet = codec.decode_connect(flags, body)
        except codec.UnsupportedProtocol as exc:
            # what an MQTT 3.1.1 server answers to MQTT 5 (and other levels): 0x01, then close
            log_event(log, "mqtt.connect_refused", clientid=None, reason="unsupported_protocol_version",
                      proto_ver=exc.level, peerhost=self.peerhost)
            self.send(codec.encode_connack(False, codec.CONNACK_UNACCEPTABLE_PROTOCOL))
            self.close("unsupported_protocol_version")
            return
        except codec.MalformedPacket as exc:
            self._protocol_error(str(exc))
            return
        clientid = packet.client_id
        if not clientid:
            if not packet.clean_session:
                self._refuse(codec.CONNACK_IDENTIFIER_REJECTED, "client_identifier_not_valid", clientid)
                return
            clientid = broker.generate_clientid()
        elif len(clientid) > broker.mqtt.max_clientid_len:
            self._refuse(codec.CONNACK_IDENTIFIER_REJECTED, "client_identifier_not_valid", clientid)
            return
        client = ClientInfo(clientid=clientid, username=packet.username, password=packet.password,
                            peerhost=self.peerhost, peerport=self.peerport, listener=self.listener_id,
                            proto_name=packet.proto_name, proto_ver=packet.proto_ver, keepalive=packet.keepalive,
                            clean_start=packet.clean_session)
        broker.metrics["client.authenticate"] += 1
        try:
            result = await broker.authn.authenticate(client)
            allowed, reason = bool(result.allow), result.reason
        except Exception as exc:  # noqa: BLE001 - an authenticator failure refuses the client (fail closed)
            log_event(log, "mqtt.authn_error", logging.ERROR, clientid=clientid, error=repr(exc))
            allowed, reason, result = False, "not_authorized", None
        if self.state == CLOSED:
            return
        if not allowed:
            broker.metrics["client.auth.failure"] += 1
            self._refuse(_CONNACK_FOR_REASON.get(reason, codec.CONNACK_NOT_AUTHORIZED), reason or "not_authorized",
                         clientid)
            return
        client.client_attrs = dict(result.client_attrs or {})
        client.is_superuser = bool(getattr(result, "is_superuser", False))  # read by the authorizer
        client.acl = list(getattr(result, "acl", None) or [])                  # the client_info authz source
        client.password = None          # not kept after authentication
        client.connected_at = now_ms()
        self.client = client
        self.will = packet.will
        session, present = await broker.open_session(self, packet.clean_session)
        if session is None or self.state == CLOSED:
            return
        self.session = session
        self.state = CONNECTED
        self.open = True
        self.send(codec.encode_connack(present, codec.CONNACK_ACCEPTED))
        if packet.keepalive:
            self._ka_timeout = packet.keepalive * broker.mqtt.keepalive_multiplier
            self._ka_handle = self._loop.call_later(self._ka_timeout, self._check_keepalive)
        broker.client_connected(self)
        if present:
            session.resend_inflight()
            session.drain()
        early, self._early = self._early, []
        for ptype, pflags, pbody in early:
            if self.state != CONNECTED:
                break
            self._dispatch(ptype, pflags, pbody)

    def _refuse(self, code: int, reason: str, clientid: str | None) -> None:
        log_event(log, "mqtt.connect_refused", clientid=clientid, reason=reason, peerhost=self.peerhost,
                  listener=self.listener_id)
        self.send(codec.encode_connack(False, code))
        self.close(reason)

    # -- packets after CONNECT --------------------------------------------------------------------------------
    def _dispatch(self, ptype: int, flags: int, body: bytes) -> None:
        try:
            if ptype == codec.PUBLISH:
                item = (_PUBLISH, *codec.decode_publish(flags, body))
                if not valid_topic_name(item[1]):
                    self._protocol_error(f"invalid topic name {item[1]!r}")
                    return
                self.recv_msg += 1
                self._enqueue(item)
            elif ptype == codec.PUBACK:
                self.session.on_puback(codec.decode_packet_id(body))
            elif ptype == codec.PUBREC:
                self.session.on_pubrec(codec.decode_packet_id(body))
            elif ptype == codec.PUBREL:
                if flags != 0x02:
                    raise codec.MalformedPacket("PUBREL flags must be 0b0010")
                pid = codec.decode_packet_id(body)
                self.session.awaiting_rel.discard(pid)
                self.send(codec.encode_ack(codec.PUBCOMP, pid))
            elif ptype == codec.PUBCOMP:
                self.session.on_pubcomp(codec.decode_packet_id(body))
            elif ptype == codec.SUBSCRIBE:
                self._enqueue((_SUBSCRIBE, *codec.decode_subscribe(flags, body)))
            elif ptype == codec.UNSUBSCRIBE:
                self._enqueue((_UNSUBSCRIBE, *codec.decode_unsubscribe(flags, body)))
            elif ptype == codec.PINGREQ:
                self.send(codec.PINGRESP_PACKET)
            elif ptype == codec.DISCONNECT:
                self.will = None                     # a clean DISCONNECT discards the Last Will
                self.close("normal")
            else:
                raise codec.MalformedPacket(f"unexpected packet type {ptype}")
        except codec.MalformedPacket as exc:
            self._protocol_error(str(exc))

    def _enqueue(self, item: tuple) -> None:
        self._inbound.append(item)
        if self._processor is None:
            self._processor = self._loop.create_task(self._process())

    async def _process(self) -> None:
        """Handle inbound PUBLISH/SUBSCRIBE/UNSUBSCRIBE one at a time, in arrival order.

        Keeps running after the connection closed so that messages already received are still routed and
        committed (their acks are simply not sent).
        """
        inbound = self._inbound
        try:
            while inbound:
                item = inbound.popleft()
                kind = item[0]
                if kind == _PUBLISH:
                    await self._publish(item)
                elif kind == _SUBSCRIBE:
                    await self._subscribe(item[1], item[2])
                else:
                    self._unsubscribe(item[1], item[2])
                if self._paused:
                    self._maybe_resume()
        except Exception as exc:  # never let one connection's bug kill the broker
            log.exception("connection processor failed", extra={"event": "mqtt.internal_error",
                                                                  "clientid": self._clientid()})
            inbound.clear()
            self.close("internal_error")
            del exc
        finally:
            self._processor = None

    async def _publish(self, item: tuple) -> None:
        _, topic, qos, pid, retain, _dup, payload = item
        broker = self.broker
        metrics = broker.metrics
        metrics["messages.received"] += 1
        session = self.session
        if qos == 2 and pid in session.awaiting_rel:
            self._push_ack(codec.PUBREC, pid, None)          # a resent QoS 2 PUBLISH: not routed twice
            return
        client = self.client
        if not await broker.authz.authorize(client, "publish", topic, qos, retain):
            metrics["authorization.deny"] += 1
            metrics["messages.dropped"] += 1
            log_event(log, "mqtt.publish_denied", logging.INFO, clientid=client.clientid, topic=topic)
            if broker.deny_disconnect:
                self.close("not_authorized")
                return
            if qos:
                if qos == 2:
                    session.awaiting_rel.add(pid)
                self._push_ack(codec.PUBACK if qos == 1 else codec.PUBREC, pid, None)
            return
        msg = Message(broker.next_message_id(), client.clientid, client.username, topic, payload, qos, retain,
                      now_ms(), client.peerhost, client.client_attrs)
        broker.dispatch(msg)
        task = broker.start_rules(msg)
        if qos == 2:
            session.awaiting_rel.add(pid)
        if qos or task is not None:
            self._push_ack(0 if qos == 0 else codec.PUBACK if qos == 1 else codec.PUBREC, pid, task)

    def _push_ack(self, ack_type: int, pid: int, task: asyncio.Task | None) -> None:
        self._acks.append((ack_type, pid, task))
        if task is None:
            if len(self._acks) == 1:
                self._flush_acks()
        else:
            task.add_done_callback(self._rules_done)

    def _rules_done(self, task: asyncio.Task) -> None:
        if not task.cancelled():
            task.exception()                # mark retrieved; the failure is handled in _flush_acks
        self._flush_acks()

    def _flush_acks(self) -> None:
        acks = self._acks
        while acks:
            ack_type, pid, task = acks[0]
            if task is not None:
                if not task.done():
                    break
                error = None if not task.cancelled() else "cancelled"
                if error is None and task.exception() is not None:
                    error = repr(task.exception())
                if error is not None:
                    # never acknowledge what was not committed: close, the client resends it
                    self.broker.metrics["messages.rules_failed"] += 1
                    log_event(log, "mqtt.rule_delivery_failed", logging.ERROR, clientid=self._clientid(),
                              packet_id=pid, error=error)
                    acks.clear()
                    self.close("internal_error")
                    return
            acks.popleft()
            if ack_type and self.open:
                self.send(codec.encode_ack(ack_type, pid))
        if self._paused:
            self._maybe_resume()

    def _maybe_resume(self) -> None:
        if self._paused and self.state != CLOSED and \
                len(self._inbound) + len(self._acks) <= PIPELINE_LIMIT // 2:
            self._paused = False
            self.transport.resume_reading()

    async def _subscribe(self, pid: int, requests: list[tuple[str, int]]) -> None:
        broker = self.broker
        client = self.client
        codes = []
        granted = []
        for topic_filter, qos in requests:
            if not valid_topic_filter(topic_filter) or topic_filter.startswith(("$share/", "$queue/")):
                codes.append(codec.SUBACK_FAILURE)
                log_event(log, "mqtt.subscribe_refused", clientid=client.clientid, topic=topic_filter,
                          reason="topic_filter_invalid_or_unsupported")
                continue
            if not await broker.authz.authorize(client, "subscribe", topic_filter, qos, False):
                broker.metrics["authorization.deny"] += 1
                codes.append(codec.SUBACK_FAILURE)
                log_event(log, "mqtt.subscribe_denied", clientid=client.clientid, topic=topic_filter)
                if broker.deny_disconnect:
                    self.close("not_authorized")
                    return
                continue
            qos = min(qos, broker.mqtt.max_qos_allowed)
            if self.state == CLOSED:
                return
            broker.subscribe(self.session, topic_filter, qos)
            codes.append(qos)
            granted.append((topic_filter, qos))
        if self.open:
            self.send(codec.encode_suback(pid, codes))
        for topic_filter, qos in granted:
            broker.deliver_retained(self.session, topic_filter, qos)

    def _unsubscribe(self, pid: int, filters: list[str]) -> None:
        for topic_filter in filters:
            self.broker.unsubscribe(self.session, topic_filter)
        if self.open:
            self.send(codec.encode_ack(codec.UNSUBACK, pid))

    # -- timers -----------------------------------------------------------------------------------------------
    def _idle_timeout(self) -> None:
        self._idle_handle = None
        if self.state == IDLE:
            self.close("idle_timeout")

    def _check_keepalive(self) -> None:
        self._ka_handle = None
        if self.state != CONNECTED:
            return
        idle = self._loop.time() - self._last_recv
        if idle >= self._ka_timeout - 0.001:
            log_event(log, "mqtt.keepalive_timeout", clientid=self._clientid(), keepalive=self.client.keepalive)
            self.close("keepalive_timeout")
        else:
            self._ka_handle = self._loop.call_later(self._ka_timeout - idle, self._check_keepalive)

    # -- closing ----------------------------------------------------------------------------------------------
    def _protocol_error(self, detail: str) -> None:
        log_event(log, "mqtt.protocol_error", logging.WARNING, clientid=self._clientid(), error=detail,
                  peerhost=self.peerhost)
        self.close("protocol_error")

    def _clientid(self) -> str | None:
        return self.client.clientid if self.client else None

    def close(self, reason: str) -> asyncio.Task | None:
        """Close the connection (idempotent). Returns the task publishing the Last Will, if any."""
        if self.state == CLOSED:
            return None
        previous = self.state
        self.state = CLOSED
        self.open = False
        for handle in (self._idle_handle, self._ka_handle):
            if handle is not None:
                handle.cancel()
        self._idle_handle = self._ka_handle = None
        transport = self.transport
        if transport is not None:
            self._flush()
            transport.close()
            self.transport = None
        self.broker.connection_count -= 1
        if previous == CONNECTED:
            return self.broker.client_disconnected(self, reason)
        return None


class Broker:
    """Sessions, subscriptions, retained messages, routing; the EMQX-facing hooks."""

    def __init__(self, config: Any, authn: Any, authz: Any, rules: Any | None, *,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config
        self.mqtt = config.mqtt
        self.node = config.node_name
        self.authn = authn
        self.authz = authz
        self.rules = rules
        self.deny_disconnect = config.authorization.deny_action == "disconnect"
        self.loop = loop or asyncio.get_running_loop()
        self.sessions: dict[str, Session] = {}
        self.trie: SubscriptionTrie[Session] = SubscriptionTrie()
        self.retained = RetainedStore()
        self.connection_count = 0
        self.metrics: dict[str, int] = _CounterDict.fromkeys(METRIC_NAMES, 0)
        self.started_at = now_ms()
        self._msg_seq = itertools.count(1)
        self._id_prefix = f"{int(time.time() * 1e6) & 0xFFFFFFFFFFFF:012x}{os.urandom(4).hex()}"
        self._clientid_seq = itertools.count(1)
        self._background: set[asyncio.Task] = set()
        self._retry_task: asyncio.Task | None = None
        self.accepting = True

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._retry_task = self.loop.create_task(self._retry_loop())

    async def stop(self, timeout: float = 5.0) -> None:
        """Close every connection (no DISCONNECT in 3.1.1; wills are published as on any close) and wait a little
        for in-flight background work (wills, API publishes) to finish."""
        self.accepting = False
        if self._retry_task is not None:
            self._retry_task.cancel()
        for session in list(self.sessions.values()):
            if session.conn is not None:
                session.conn.close("shutdown")
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)

    def spawn(self, coro: Any, what: str) -> asyncio.Task:
        task = self.loop.create_task(coro)
        self._background.add(task)

        def done(t: asyncio.Task) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log_event(log, "broker.background_failed", logging.ERROR, what=what, error=repr(t.exception()))
        task.add_done_callback(done)
        return task

    async def _retry_loop(self) -> None:
        interval = self.mqtt.retry_interval_s
        tick = max(0.05, min(1.0, interval / 2))
        while True:
            await asyncio.sleep(tick)
            cutoff = time.monotonic() - interval
            for session in self.sessions.values():
                if session.inflight and session.conn is not None:
                    resent = session.resend_inflight(older_than=cutoff)
                    if resent:
                        self.metrics["messages.retried"] += resent

    # -- ids ------------------------------------------------------------------------------------------------
    def next_message_id(self) -> str:
        return f"{self._id_prefix}{next(self._msg_seq):012x}"

    def generate_clientid(self) -> str:
        return f"standin-{os.urandom(6).hex()}-{next(self._clientid_seq)}"

    # -- sessions ---------------------------------------------------------------------------------------------
    async def open_session(self, conn: Connection, clean: bool) -> tuple[Session | None, bool]:
        """Take over / discard / resume the client's session; returns (session, session_present)."""
        clientid = conn.client.clientid
        existing = self.sessions.get(clientid)
        will_task = None
        if existing is not None:
            old = existing.conn
            if old is not None and old.state != CLOSED:
                reason = "discarded" if clean else "takenover"
                self.metrics[f"session.{reason}"] += 1
                log_event(log, "mqtt.session_" + reason, clientid=clientid, old_peer=f"{old.peerhost}:{old.peerport}")
                will_task = old.close(reason)
            if clean or existing.clean:
                self.discard_session(existing)
                existing = None
            elif existing.expiry_handle is not None:
                existing.expiry_handle.cancel()
                existing.expiry_handle = None
        if will_task is not None:
            await asyncio.wait([will_task])        # the old connection's will goes out before the new CONNACK
        if conn.state == CLOSED:
            return None, False
        if existing is not None and self.sessions.get(clientid) is not existing:
            existing = None                          # discarded meanwhile (kick or expiry)
        current = self.sessions.get(clientid)
        if current is not None and current is not existing:
            if current.conn is not None:
                current.conn.close("discarded" if clean else "takenover")
            if clean or current.clean:
                self.discard_session(current)
            else:
                existing = current
        if existing is None:
            session = Session(clientid, clean, self.mqtt.max_inflight, self.mqtt.max_mqueue_len)
            self.sessions[clientid] = session
            self.metrics["session.created"] += 1
            present = False
        else:
            session = existing
            session.clean = clean
            self.metrics["session.resumed"] += 1
            present = True
        session.conn = conn
        session.client = conn.client
        session.connected_at = conn.client.connected_at
        session.disconnected_at = None
        return session, present

    def discard_session(self, session: Session) -> None:
        if session.expiry_handle is not None:
            session.expiry_handle.cancel()
            session.expiry_handle = None
        for topic_filter in session.subscriptions:
            self.trie.remove(topic_filter, session)
        session.subscriptions.clear()
        session.mqueue.clear()
        session.inflight.clear()
        if self.sessions.get(session.clientid) is session:
            del self.sessions[session.clientid]

    def _expire_session(self, session: Session) -> None:
        session.expiry_handle = None
        if session.conn is None and self.sessions.get(session.clientid) is session:
            log_event(log, "mqtt.session_expired", clientid=session.clientid, dropped=len(session.mqueue))
            self.discard_session(session)

    def client_connected(self, conn: Connection) -> None:
        client = conn.client
        self.metrics["client.connected"] += 1
        log_event(log, "mqtt.client_connected", clientid=client.clientid, username=client.username,
                  peerhost=client.peerhost, listener=conn.listener_id, clean_start=client.clean_start,
                  keepalive=client.keepalive)
        if self.rules is not None:
            self.rules.client_connected(
                client, sockname=_sockname(conn),
                expiry_interval=0 if client.clean_start else int(self.mqtt.session_expiry_interval_s))

    def client_disconnected(self, conn: Connection, reason: str) -> asyncio.Task | None:
        client = conn.client
        session = conn.session
        disconnected_at = now_ms()
        if session is not None and session.conn is conn:
            session.conn = None
            session.disconnected_at = disconnected_at
            if reason in ("takenover", "discarded"):
                pass                                  # open_session decides about this session
            elif session.clean or reason == "kicked":
                self.discard_session(session)
            elif self.accepting:
                session.expiry_handle = self.loop.call_later(self.mqtt.session_expiry_interval_s,
                                                             self._expire_session, session)
        self.metrics["client.disconnected"] += 1
        log_event(log, "mqtt.client_disconnected", clientid=client.clientid, reason=reason,
                  peerhost=client.peerhost)
        if self.rules is not None:
            self.rules.client_disconnected(client, reason, disconnected_at=disconnected_at, sockname=_sockname(conn))
        will = conn.will
        conn.will = None
        return self.spawn(self._after_disconnect(client, will), "last_will")

    async def _after_disconnect(self, client: ClientInfo, will: codec.Will | None) -> None:
        if will is not None:
            await self._publish_will(client, will)
        live = self.sessions.get(client.clientid)
        if live is None or live.conn is None:
            self.authz.forget(client.clientid)

    async def _publish_will(self, client: ClientInfo, will: codec.Will) -> None:
        if not valid_topic_name(will.topic) or not await self.authz.authorize(
                client, "publish", will.topic, will.qos, will.retain):
            self.metrics["authorization.deny"] += 1
            log_event(log, "mqtt.last_will_denied", logging.WARNING, clientid=client.clientid, topic=will.topic)
            return
        msg = Message(self.next_message_id(), client.clientid, client.username, will.topic, will.payload,
                      will.qos, will.retain, now_ms(), client.peerhost, client.client_attrs)
        self.metrics["messages.received"] += 1
        log_event(log, "mqtt.last_will_published", clientid=client.clientid, topic=will.topic)
        self.dispatch(msg)
        task = self.start_rules(msg)
        if task is not None:
            await task

    def kick(self, clientid: str) -> bool:
        session = self.sessions.get(clientid)
        if session is None:
            return False
        if session.conn is not None:
            session.conn.close("kicked")
        self.discard_session(session)
        return True

    # -- subscriptions and routing ----------------------------------------------------------------------------
    def subscribe(self, session: Session, topic_filter: str, qos: int) -> None:
        session.subscriptions[topic_filter] = qos
        self.trie.add(topic_filter, session, qos)

    def unsubscribe(self, session: Session, topic_filter: str) -> None:
        if session.subscriptions.pop(topic_filter, None) is not None:
            self.trie.remove(topic_filter, session)

    def deliver_retained(self, session: Session, topic_filter: str, qos: int) -> None:
        for topic, payload, msg_qos in self.retained.lookup(topic_filter):
            session.deliver(codec.encode_topic(topic), payload, msg_qos if msg_qos < qos else qos, True)

    def dispatch(self, msg: Message) -> int:
        """Store if retained, deliver to every matching session; returns how many sessions got it."""
        topic = msg.topic
        if msg.retain:
            self.retained.store(topic, msg.payload, msg.qos)
        subscribers = self.trie.match(topic)
        if not subscribers:
            self.metrics["messages.dropped.no_subscribers"] += 1
            return 0
        topic_b = codec.encode_topic(topic)
        qos = msg.qos
        payload = msg.payload
        for session, sub_qos in subscribers.items():
            session.deliver(topic_b, payload, qos if qos < sub_qos else sub_qos)
        self.metrics["messages.sent"] += len(subscribers)
        return len(subscribers)

    def start_rules(self, msg: Message) -> asyncio.Task | None:
        """RuleEngine.on_publish as a task, or None when no rule selects the topic (no task per message then)."""
        rules = self.rules
        if rules is None or not rules.rules_for_topic(msg.topic):
            return None
        return self.loop.create_task(rules.on_publish(msg))

    def publish_from_api(self, topic: str, payload: bytes, qos: int, retain: bool) -> tuple[str, int]:
        """A message from POST /api/v5/publish (trusted: no authz); rules see it with clientid ``http_api``."""
        msg = Message(self.next_message_id(), "http_api", None, topic, payload, qos, retain, now_ms(),
                      "127.0.0.1", {})
        self.metrics["messages.received"] += 1
        delivered = self.dispatch(msg)
        task = self.start_rules(msg)
        if task is not None:
            self._background.add(task)
            task.add_done_callback(self._api_rules_done)
        return msg.id, delivered

    def _api_rules_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log_event(log, "broker.api_publish_rules_failed", logging.ERROR, error=repr(task.exception()))

    # -- info for the REST API --------------------------------------------------------------------------------
    def client_info(self, session: Session) -> dict[str, Any]:
        client = session.client
        conn = session.conn
        connected = conn is not None and conn.open
        return {
            "clientid": session.clientid,
            "username": client.username if client else None,
            "connected": connected,
            "connected_at": _iso(session.connected_at),
            "created_at": _iso(session.created_at),
            "disconnected_at": _iso(session.disconnected_at) if session.disconnected_at else None,
            "ip_address": client.peerhost if client else None,
            "port": client.peerport if client else None,
            "proto_name": client.proto_name if client else "MQTT",
            "proto_ver": client.proto_ver if client else 4,
            "keepalive": client.keepalive if client else 0,
            "clean_start": session.clean,
            "expiry_interval": 0 if session.clean else int(self.mqtt.session_expiry_interval_s),
            "listener": client.listener if client else None,
            "node": self.node,
            "is_superuser": bool(getattr(client, "is_superuser", False)),
            "client_attrs": dict(client.client_attrs) if client else {},
            "subscriptions_cnt": len(session.subscriptions),
            "subscriptions_max": "infinity",
            "mqueue_len": len(session.mqueue),
            "mqueue_max": session.max_mqueue_len,
            "mqueue_dropped": session.dropped,
            "inflight_cnt": len(session.inflight),
            "inflight_max": session.max_inflight,
            "awaiting_rel_cnt": len(session.awaiting_rel),
            "recv_msg": conn.recv_msg if conn else 0,
            "send_msg": session.delivered,
        }

    def stats(self) -> dict[str, int]:
        live = sum(1 for s in self.sessions.values() if s.conn is not None and s.conn.open)
        return {
            "connections.count": len(self.sessions),
            "live_connections.count": live,
            "sessions.count": len(self.sessions),
            "subscriptions.count": self.trie.count,
            "subscribers.count": self.trie.count,
            "topics.count": len({topic_filter for topic_filter, _s, _q in self.trie.filters()}),
            "retained.count": len(self.retained),
        }


# The counters GET /api/v5/metrics always lists (EMQX lists its counters from boot, at 0).
METRIC_NAMES = ("client.auth.failure", "client.authenticate", "client.connected", "client.disconnected",
                "messages.dropped", "messages.dropped.no_subscribers", "messages.received", "messages.retried",
                "messages.rules_failed", "messages.sent", "packets.received", "packets.sent", "session.created",
                "session.resumed")


class _CounterDict(dict):
    """A dict of counters whose missing keys read as 0."""

    def __missing__(self, key: str) -> int:
        return 0


def _sockname(conn: Connection) -> str:
    return f"{conn.sockname[0]}:{conn.sockname[1]}"


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}+00:00"
