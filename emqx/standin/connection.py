"""One MQTT network connection: the protocol state machine of one client and its inbound pipeline.

One ``Connection`` per network connection, independent of the transport (TCP, TLS, WebSocket — see
``listeners``): the transport hands it bytes and it writes bytes back through ``transport.write``. It asks the
broker (broker.py) for its session, for routing and for the EMQX hooks (hooks.py); the broker and the session
see it only as a ``session.ClientConnection``.

Inbound PUBLISH path (per connection, never blocking the socket reader):

    frames ─► inbound FIFO ─► processor task: authorize → route → rules (evaluate, queue on the actions) → PUBACK

as EMQX's emqx_channel ``do_publish`` does: the PUBACK (PUBREC for QoS 2) is sent once ``emqx_broker:publish``
returned — the message routed and its rule outputs handed to the actions' buffer workers — never after the
actions ran. A PUBACK therefore does not mean "stored": what an action fails or drops afterwards is counted in the
rule and action metrics (rules/actions/base.py). Acks keep the order of the PUBLISHes (MQTT-4.6.0-2). When
``PIPELINE_LIMIT`` messages wait in the inbound FIFO (authorization callouts pending) the transport stops reading.

As in aiohttp's web_protocol.py: the inbound FIFO is consumed by one stored task, timers are ``call_at`` handles
cancelled on close, and every task the connection starts is kept — while the connection lives by the connection,
after it closed by the broker (``Broker.keep``), which waits for them when it stops. Work a client started is
finished after it went away: messages already received are still routed and committed.

For MQTT 3.1.1 the Last Will is published on every close except a DISCONNECT packet — also on takeover, discard
and kick, as EMQX does for v3 (docs/EMQX.md; EMQX emqx_channel.erl).
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Protocol

from fleetcore.logs import log_event

from .broker import Broker, now_ms
from .clientinfo import AuthnResult, ClientInfo, Message, PeerCert
from .limiter import PublishQuota
from .mqtt import codec
from .session import Session
from .topics import valid_topic_filter, valid_topic_name

log = logging.getLogger("emqx.standin.connection")

# Inbound messages per connection before the socket stops being read.
PIPELINE_LIMIT = 256

IDLE, CONNECTING, CONNECTED, CLOSED = 0, 1, 2, 3
_PUBLISH, _SUBSCRIBE, _UNSUBSCRIBE = codec.PUBLISH, codec.SUBSCRIBE, codec.UNSUBSCRIBE

_CONNACK_FOR_REASON = {"bad_username_or_password": codec.CONNACK_BAD_CREDENTIALS}


class Transport(Protocol):
    """What a connection writes to: asyncio's TCP/TLS transport, or listeners' WebSocket adapter."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_write_buffer_size(self) -> int: ...


class Connection:
    """One MQTT network connection (protocol state machine + inbound pipeline)."""

    def __init__(self, broker: Broker, transport: Transport, listener_id: str, peer: tuple[str, int],
                 sock: tuple[str, int], closed_reason: str = "tcp_closed", quota: PublishQuota | None = None,
                 peercert: PeerCert | None = None) -> None:
        self.broker = broker
        self.peercert = peercert
        self.transport: Transport | None = transport
        self.listener_id = listener_id
        self.peerhost, self.peerport = peer[0], peer[1]
        self.sockname = f"{sock[0]}:{sock[1]}"
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
        self._connecting: asyncio.Task[None] | None = None
        # (_PUBLISH, topic, qos, packet id, retain, dup, payload) | (_SUBSCRIBE | _UNSUBSCRIBE, packet id, list)
        self._inbound: deque[tuple[Any, ...]] = deque()
        self._processor: asyncio.Task[None] | None = None
        self._paused = False
        self._last_recv = self._loop.time()
        self._ka_timeout = 0.0
        self._ka_handle: asyncio.TimerHandle | None = None
        idle = broker.mqtt.idle_timeout_s                 # "infinity" reads as inf: no timer
        self._idle_handle: asyncio.TimerHandle | None = self._loop.call_at(
            self._loop.time() + idle, self._idle_timeout) if idle != float("inf") else None
        self.quota = quota
        self.recv_msg = 0
        self._quota_logged_at = float("-inf")
        broker.connection_count += 1

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    @property
    def busy(self) -> bool:
        """Messages were read that are not yet processed and acknowledged."""
        return bool(self._inbound)

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
                self._connecting = self._loop.create_task(self._connect(flags, body))
            elif self.state == CONNECTING:
                self._early.append((ptype, flags, body))
            else:
                return
        if self.state != CLOSED and len(self._inbound) >= PIPELINE_LIMIT:
            self.pause_reading()

    def connection_lost(self) -> None:
        self.close(self.closed_reason)

    def pause_reading(self) -> None:
        """Stop reading from the socket until the pipeline is down to half its limit (``_maybe_resume``)."""
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

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
        try:
            await self._handle_connect(flags, body)
        except Exception:
            log.exception("connect failed", extra={"event": "mqtt.internal_error", "clientid": self._clientid()})
            self.close("internal_error")
        finally:
            self._connecting = None

    async def _handle_connect(self, flags: int, body: bytes) -> None:
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
                            clean_start=packet.clean_session, peercert=self.peercert)
        # before authentication, as emqx_channel:process_connect/2: check_banned, then count_flapping_event
        if broker.banned.check(clientid, packet.username, self.peerhost):
            broker.metrics["client.banned"] += 1
            self._refuse(codec.CONNACK_NOT_AUTHORIZED, "banned", clientid)
            return
        broker.flapping.detect(clientid, self.peerhost)
        broker.metrics["client.authenticate"] += 1
        try:
            result = await broker.authn.authenticate(client)
        except Exception as exc:  # noqa: BLE001 - an authenticator failure refuses the client (fail closed)
            log_event(log, "mqtt.authn_error", logging.ERROR, clientid=clientid, error=repr(exc))
            result = AuthnResult(False, "not_authorized")
        if self.state == CLOSED:
            return
        if not result.allow:
            broker.metrics["client.auth.failure"] += 1
            reason = result.reason
            self._refuse(_CONNACK_FOR_REASON.get(reason, codec.CONNACK_NOT_AUTHORIZED), reason or "not_authorized",
                         clientid)
            return
        broker.metrics["client.auth.success"] += 1
        client.client_attrs = dict(result.client_attrs or {})
        client.is_superuser = bool(result.is_superuser)     # read by the authorizer
        client.acl = list(result.acl or [])                  # the client_info authz source
        client.password = None          # not kept after authentication
        client.connected_at = now_ms()
        self.client = client
        self.will = packet.will
        session, present = await broker.open_session(self, client, packet.clean_session)
        if session is None or self.state == CLOSED:
            return
        self.session = session
        self.state = CONNECTED
        self.open = True
        self.send(codec.encode_connack(present, codec.CONNACK_ACCEPTED))
        if packet.keepalive:
            self._ka_timeout = packet.keepalive * broker.mqtt.keepalive_multiplier
            self._ka_handle = self._loop.call_at(self._loop.time() + self._ka_timeout, self._check_keepalive)
        broker.client_connected(client, self.sockname)
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
        session = self.session
        assert session is not None                 # CONNECTED
        try:
            if ptype == codec.PUBLISH:
                item = (_PUBLISH, *codec.decode_publish(flags, body))
                if not valid_topic_name(item[1]):
                    self._protocol_error(f"invalid topic name {item[1]!r}")
                    return
                self.recv_msg += 1
                self._enqueue(item)
            elif ptype == codec.PUBACK:
                session.on_puback(codec.decode_packet_id(body))
            elif ptype == codec.PUBREC:
                session.on_pubrec(codec.decode_packet_id(body))
            elif ptype == codec.PUBREL:
                if flags != 0x02:
                    raise codec.MalformedPacket("PUBREL flags must be 0b0010")
                pid = codec.decode_packet_id(body)
                session.awaiting_rel.discard(pid)
                self.send(codec.encode_ack(codec.PUBCOMP, pid))
            elif ptype == codec.PUBCOMP:
                session.on_pubcomp(codec.decode_packet_id(body))
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

    def _enqueue(self, item: tuple[Any, ...]) -> None:
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
        except Exception as exc:
            log.exception("connection processor failed", extra={"event": "mqtt.internal_error",
                                                                  "clientid": self._clientid()})
            inbound.clear()
            self.close("internal_error")
            del exc
        finally:
            self._processor = None

    async def _publish(self, item: tuple[Any, ...]) -> None:
        _, topic, qos, pid, retain, _dup, payload = item
        broker = self.broker
        metrics = broker.metrics
        metrics["messages.received"] += 1
        session = self.session
        client = self.client
        assert session is not None and client is not None      # CONNECTED
        if qos == 2 and pid in session.awaiting_rel:
            self._ack(codec.PUBREC, pid)          # a resent QoS 2 PUBLISH: not routed twice
            return
        if self.quota is not None and not self.quota.try_consume(len(payload)):
            # EMQX 5.10 drops what is over quota (emqx_channel:process_publish/2): QoS 0 silently, QoS 1/2 with
            # 0x97, which a 3.1.1 PUBACK/PUBREC cannot carry — the client sees a plain ack (limiter.py)
            metrics["packets.publish.quota_exceeded"] += 1
            if qos:
                if qos == 2:
                    session.awaiting_rel.add(pid)    # the client's PUBREL is answered like any other
                self._ack(codec.PUBACK if qos == 1 else codec.PUBREC, pid)
            else:
                metrics["messages.dropped"] += 1
                metrics["messages.dropped.quota_exceeded"] += 1
            self._quota_warning(client.clientid, topic)
            return
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
                self._ack(codec.PUBACK if qos == 1 else codec.PUBREC, pid)
            return
        msg = Message(broker.next_message_id(), client.clientid, client.username, topic, payload, qos, retain,
                      now_ms(), client.peerhost, client.client_attrs)
        broker.dispatch(msg)
        broker.run_rules(msg)               # queued on the actions, not waited for (EMQX acks on receipt)
        if qos == 2:
            session.awaiting_rel.add(pid)
        if qos:
            self._ack(codec.PUBACK if qos == 1 else codec.PUBREC, pid)

    def _ack(self, ack_type: int, pid: int) -> None:
        if self.open:
            self.send(codec.encode_ack(ack_type, pid))

    def _maybe_resume(self) -> None:
        if self._paused and self.state != CLOSED and \
                len(self._inbound) <= PIPELINE_LIMIT // 2:
            self._paused = False
            assert self.transport is not None           # not CLOSED
            self.transport.resume_reading()

    async def _subscribe(self, pid: int, requests: list[tuple[str, int]]) -> None:
        broker = self.broker
        client = self.client
        session = self.session
        assert session is not None and client is not None      # CONNECTED
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
            broker.subscribe(session, topic_filter, qos)
            codes.append(qos)
            granted.append((topic_filter, qos))
        if self.open:
            self.send(codec.encode_suback(pid, codes))
        for topic_filter, qos in granted:
            broker.deliver_retained(session, topic_filter, qos)

    def _unsubscribe(self, pid: int, filters: list[str]) -> None:
        session = self.session
        assert session is not None                 # CONNECTED
        for topic_filter in filters:
            self.broker.unsubscribe(session, topic_filter)
        if self.open:
            self.send(codec.encode_ack(codec.UNSUBACK, pid))

    def _quota_warning(self, clientid: str, topic: str) -> None:
        """One log line per second per connection at most (EMQX: ?SLOG_THROTTLE, tag QUOTA)."""
        now = self._loop.time()
        if now >= self._quota_logged_at + 1.0:
            self._quota_logged_at = now
            log_event(log, "mqtt.publish_quota_exceeded", logging.WARNING, clientid=clientid, topic=topic,
                      dropped_total=self.broker.metrics["packets.publish.quota_exceeded"])

    # -- timers -----------------------------------------------------------------------------------------------
    def _idle_timeout(self) -> None:
        self._idle_handle = None
        if self.state == IDLE:
            self.close("idle_timeout")

    def _check_keepalive(self) -> None:
        self._ka_handle = None
        if self.state != CONNECTED:
            return
        client = self.client
        assert client is not None                  # CONNECTED
        deadline = self._last_recv + self._ka_timeout
        if self._loop.time() >= deadline - 0.001:
            log_event(log, "mqtt.keepalive_timeout", clientid=client.clientid, keepalive=client.keepalive)
            self.close("keepalive_timeout")
        else:
            self._ka_handle = self._loop.call_at(deadline, self._check_keepalive)     # a packet came meanwhile

    # -- closing ----------------------------------------------------------------------------------------------
    def _protocol_error(self, detail: str) -> None:
        log_event(log, "mqtt.protocol_error", logging.WARNING, clientid=self._clientid(), error=detail,
                  peerhost=self.peerhost)
        self.close("protocol_error")

    def _clientid(self) -> str | None:
        return self.client.clientid if self.client else None

    def close(self, reason: str) -> asyncio.Task[None] | None:
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
        broker = self.broker
        broker.connection_count -= 1
        # what the client started goes on without it (and is awaited by Broker.stop)
        for task in (self._connecting, self._processor):
            if task is not None and not task.done():
                broker.keep(task)
        if previous == CONNECTED:
            assert self.client is not None
            will, self.will = self.will, None
            return broker.client_disconnected(self, reason, client=self.client, session=self.session, will=will,
                                              sockname=self.sockname)
        return None
