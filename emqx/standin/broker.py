"""The MQTT 3.1.1 server: sessions, subscriptions, retained messages, routing, and the EMQX hooks.

Like EMQX's emqx_cm and emqx_broker: the broker opens, takes over, expires and discards sessions (session.py),
routes messages to them, and calls authentication, authorization and the rule engine through hooks.py. Each
client's protocol runs in its own ``connection.Connection``, which the broker knows only as a
``session.ClientConnection``.

EMQX behaviours copied here (docs/EMQX.md §5.5, EMQX emqx_channel.erl): a second CONNECT with the same client id
closes the first connection (disconnect reason ``takenover`` when the session is resumed, ``discarded`` when the
new connection is clean); for MQTT 3.1.1 the Last Will is published on every close except a DISCONNECT packet —
also on takeover, discard and kick, as EMQX does for v3 — and only if the client may publish to its topic
(authorized at publish time); rules also see wills and messages published through the REST API.

The broker keeps every task it starts, and the unfinished ones of closed connections (``keep``); ``stop`` waits
for them (bounded) and cancels what is left.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Coroutine
from typing import Any

from fleetcore.logs import log_event

from . import memory
from .banned import BannedTable, FlappingDetector, run_housekeeping
from .clientinfo import ClientInfo, Message
from .config import BrokerConfig
from .hooks import AuthnHooks, AuthzHooks, RuleHooks
from .mqtt import codec
from .retained import RetainedStore
from .session import ClientConnection, Session
from .topics import SubscriptionTrie, valid_topic_name

log = logging.getLogger("emqx.standin.broker")

# How long Broker.stop waits for cancelled tasks to finish.
CANCEL_GRACE_S = 1.0


def now_ms() -> int:
    return int(time.time() * 1000)


class Broker:
    """Sessions, subscriptions, retained messages, routing; the EMQX-facing hooks."""

    def __init__(self, config: BrokerConfig, authn: AuthnHooks, authz: AuthzHooks, rules: RuleHooks | None, *,
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
        self._background: set[asyncio.Task[Any]] = set()
        self._retry_task: asyncio.Task[None] | None = None
        self.banned = BannedTable(self.kick)
        self.flapping = FlappingDetector(config.flapping, self.banned)
        self._housekeeping: asyncio.Task[None] | None = None
        self._trimming: asyncio.Task[None] | None = None
        self.accepting = True

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._retry_task = self.loop.create_task(self._retry_loop())
        self._housekeeping = self.loop.create_task(run_housekeeping(self.banned, self.flapping))
        self._trimming = self.loop.create_task(memory.trim_after_waves())

    async def stop(self, timeout: float = 5.0) -> None:
        """Close every connection (no DISCONNECT in 3.1.1; wills are published as on any close), wait a little for
        in-flight background work (wills, API publishes, what closed connections left) and cancel what is left."""
        self.accepting = False
        for task in (self._retry_task, self._housekeeping, self._trimming):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        self._retry_task = self._housekeeping = self._trimming = None
        for session in list(self.sessions.values()):
            if session.expiry_handle is not None:
                session.expiry_handle.cancel()
                session.expiry_handle = None
            if session.conn is not None:
                session.conn.close("shutdown")
        if self._background:
            _done, late = await asyncio.wait(list(self._background), timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=CANCEL_GRACE_S)

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the broker keeps until it is done; a failure is logged."""
        task = self.loop.create_task(coro)
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log_event(log, "broker.background_failed", logging.ERROR, what=what, error=repr(t.exception()))
        task.add_done_callback(done)
        return task

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Keep a task someone else started (a closed connection's) until it is done; its owner handles failures."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
    async def open_session(self, conn: ClientConnection, client: ClientInfo,
                           clean: bool) -> tuple[Session | None, bool]:
        """Take over / discard / resume the client's session; returns (session, session_present)."""
        clientid = client.clientid
        existing = self.sessions.get(clientid)
        will_task = None
        if existing is not None:
            old = existing.conn
            if old is not None and not old.closed:
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
        if conn.closed:
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
        session.client = client
        session.connected_at = client.connected_at
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

    def client_connected(self, client: ClientInfo, sockname: str) -> None:
        self.metrics["client.connected"] += 1
        log_event(log, "mqtt.client_connected", clientid=client.clientid, username=client.username,
                  peerhost=client.peerhost, listener=client.listener, clean_start=client.clean_start,
                  keepalive=client.keepalive)
        if self.rules is not None:
            self.rules.client_connected(
                client, sockname=sockname,
                expiry_interval=0 if client.clean_start else int(self.mqtt.session_expiry_interval_s))

    def client_disconnected(self, conn: ClientConnection, reason: str, *, client: ClientInfo,
                            session: Session | None, will: codec.Will | None, sockname: str) -> asyncio.Task[None]:
        """A connected client's connection closed: keep or drop its session, fire the event, publish its will."""
        disconnected_at = now_ms()
        if session is not None and session.conn is conn:
            session.conn = None
            session.disconnected_at = disconnected_at
            if reason in ("takenover", "discarded"):
                pass                                  # open_session decides about this session
            elif session.clean or reason == "kicked":
                self.discard_session(session)
            elif self.accepting:
                session.expiry_handle = self.loop.call_at(self.loop.time() + self.mqtt.session_expiry_interval_s,
                                                          self._expire_session, session)
        self.metrics["client.disconnected"] += 1
        log_event(log, "mqtt.client_disconnected", clientid=client.clientid, reason=reason,
                  peerhost=client.peerhost)
        if self.rules is not None:
            self.rules.client_disconnected(client, reason, disconnected_at=disconnected_at, sockname=sockname)
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
        self.run_rules(msg)

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
        """Store if retained, deliver once per matching subscription; returns how many copies were sent."""
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
        for session, sub_qos in subscribers:
            session.deliver(topic_b, payload, qos if qos < sub_qos else sub_qos)
        self.metrics["messages.sent"] += len(subscribers)
        return len(subscribers)

    def run_rules(self, msg: Message) -> None:
        """The ``message.publish`` hook: the rule engine evaluates its rules and queues their outputs on the
        actions' buffer workers, without waiting for them (EMQX emqx_broker:publish → emqx_rule_events). What an
        action does with the message later is in its metrics, not in the PUBACK."""
        if self.rules is not None:
            self.rules.publish(msg)

    def publish_from_api(self, topic: str, payload: bytes, qos: int, retain: bool) -> tuple[str, int]:
        """A message from POST /api/v5/publish (trusted: no authz); rules see it with clientid ``http_api``."""
        msg = Message(self.next_message_id(), "http_api", None, topic, payload, qos, retain, now_ms(),
                      "127.0.0.1", {})
        self.metrics["messages.received"] += 1
        delivered = self.dispatch(msg)
        self.run_rules(msg)
        return msg.id, delivered

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
            "is_superuser": bool(client.is_superuser) if client else False,
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
                "messages.dropped", "messages.dropped.no_subscribers", "messages.dropped.quota_exceeded",
                "messages.received", "messages.retried", "packets.publish.quota_exceeded", "client.banned",
                "messages.sent", "packets.received", "packets.sent", "session.created",
                "session.resumed")


class _CounterDict(dict):
    """A dict of counters whose missing keys read as 0."""

    def __missing__(self, key: str) -> int:
        return 0


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}+00:00"
