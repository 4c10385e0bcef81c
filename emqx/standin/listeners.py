"""MQTT listeners from the configuration: ``tcp``, ``ssl`` (TLS) and ``ws`` (MQTT over WebSocket).

TCP and TLS use an asyncio ``Protocol`` straight on the event loop's transport (no stream layer per packet);
WebSocket uses an aiohttp server at ``websocket.mqtt_path`` with the ``mqtt`` subprotocol, one binary WebSocket
message carrying any number of MQTT bytes. ``max_connections`` is per listener; a connection over the limit is
closed before anything is read (as esockd does). Disabled listeners are skipped; ``wss`` is refused at start.

Connections that never get as far as MQTT are bounded as in EMQX 5.10.4:

- ``max_conn_rate`` / ``max_conn_burst``: over the rate the new connection is closed, and so is every connection
  accepted in the next 100 ms (limiter.py; esockd's acceptor).
- TLS: the handshake must finish within ``ssl_options.handshake_timeout`` (15 s by default; esockd_transport:wait
  → ssl:handshake/2). asyncio's own default would be 60 s.
- WebSocket: the HTTP upgrade request must be complete within 5 s, or the connection is answered 408 and closed —
  cowboy's ``request_timeout``, which EMQX leaves at its default (emqx_listeners.erl ws_opts/3 passes no protocol
  options; its wait_listener_stopped/2 relies on the same 5 s).
- After that, ``mqtt.idle_timeout`` bounds the wait for CONNECT on every listener (connection.py).

Client certificates (mutual TLS) as EMQX's ``ssl_options``: ``verify = verify_peer`` asks the client for one and
checks it against ``cacertfile``; with ``fail_if_no_peer_cert = true`` a client without one fails the handshake.
A verified certificate's CN, subject and DER go with the connection's client info to the authn templates
(``${cert_common_name}``, ``${cert_subject}``, ``${cert_pem}``), as emqx_channel:set_peercert_infos/3 does.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, cast

from aiohttp import WSMsgType, web

from fleetcore.logs import log_event

from .broker import Broker
from .clientinfo import PeerCert
from .config import ListenerConfig
from .connection import Connection
from .limiter import ConnectionRate, PublishQuota

log = logging.getLogger("emqx.standin.listeners")

WS_REQUEST_TIMEOUT_S = 5.0          # cowboy's request_timeout default (cowboy_http.erl), not configurable in EMQX
_REQUEST_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"

_TLS_VERSIONS = {"tlsv1.3": ssl.TLSVersion.TLSv1_3, "tlsv1.2": ssl.TLSVersion.TLSv1_2,
                 "tlsv1.1": ssl.TLSVersion.TLSv1_1, "tlsv1": ssl.TLSVersion.TLSv1}


class ListenerError(RuntimeError):
    """A listener cannot be started as configured."""


class _Limit:
    def __init__(self, maximum: int | None) -> None:
        self.maximum = maximum
        self.current = 0

    def acquire(self) -> bool:
        if self.maximum is not None and self.current >= self.maximum:
            return False
        self.current += 1
        return True

    def release(self) -> None:
        self.current -= 1


def publish_quota(listener: ListenerConfig) -> PublishQuota | None:
    """A new client's own buckets for the listener's ``bytes_rate`` and ``messages_rate`` (None: unlimited)."""
    if listener.bytes is None and listener.messages is None:
        return None
    return PublishQuota(listener.bytes, listener.messages)


class MqttProtocol(asyncio.Protocol):
    """TCP/TLS transport → Connection."""

    __slots__ = ("broker", "listener", "listener_id", "limit", "closed_reason", "conn", "_counted", "_admitted")

    def __init__(self, broker: Broker, listener: ListenerConfig, limit: _Limit, closed_reason: str,
                 conn_rate: ConnectionRate | None) -> None:
        self.broker = broker
        self.listener = listener
        self.listener_id = listener.id
        self.limit = limit
        self.closed_reason = closed_reason
        self.conn: Connection | None = None
        self._counted = False
        # decided when the socket is accepted (this object is made then); a TLS connection learns it after its
        # handshake, the first moment asyncio hands over the transport
        self._admitted = conn_rate is None or conn_rate.admit()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        real_transport = cast(asyncio.Transport, transport)      # a stream server's transport
        if not self._admitted:
            self.broker.metrics["listener.connection_rate_limited"] += 1
            log_event(log, "listener.connection_refused", logging.WARNING, listener=self.listener_id,
                      reason="max_conn_rate")
            real_transport.abort()
            return
        if not self.broker.accepting or not self.limit.acquire():
            log_event(log, "listener.connection_refused", logging.WARNING, listener=self.listener_id,
                      reason="max_connections" if self.broker.accepting else "shutting_down")
            real_transport.abort()
            return
        self._counted = True
        peer = real_transport.get_extra_info("peername") or ("", 0)
        sock = real_transport.get_extra_info("sockname") or ("", 0)
        self.conn = Connection(self.broker, real_transport, self.listener_id, peer, sock, self.closed_reason,
                               publish_quota(self.listener), peer_certificate(real_transport))

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.data_received(data)

    def eof_received(self) -> bool:
        return False                                 # half-close → close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self.limit.release()
        if self.conn is not None:
            self.conn.connection_lost()
            self.conn = None


def peer_certificate(transport: asyncio.BaseTransport) -> PeerCert | None:
    """The client certificate the handshake verified, or None (plain TCP, ``verify_none``, or none sent)."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    decoded = ssl_object.getpeercert()          # {} unless the chain was verified: then no identity at all
    if not der or not decoded:
        return None
    rdns = [(key, value) for rdn in decoded.get("subject", ()) for key, value in rdn]
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
             "localityName": "L", "stateOrProvinceName": "ST"}
    common_name = next((value for key, value in rdns if key == "commonName"), "")
    subject = ",".join(f"{short.get(key, key)}={value}" for key, value in rdns)
    return PeerCert(common_name=common_name, subject=subject, der=der)


def ssl_context(options: dict[str, Any], where: str) -> ssl.SSLContext:
    """Server TLS context from EMQX ``ssl_options`` (certfile, keyfile, cacertfile, verify, versions, …)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    certfile, keyfile = options.get("certfile"), options.get("keyfile")
    if not certfile or not keyfile:
        raise ListenerError(f"{where}.ssl_options: certfile and keyfile are required")
    try:
        ctx.load_cert_chain(certfile, keyfile, password=options.get("password") or None)
        if options.get("cacertfile"):
            ctx.load_verify_locations(options["cacertfile"])
    except (OSError, ssl.SSLError) as exc:
        raise ListenerError(f"{where}.ssl_options: cannot load certificates: {exc}") from None
    verify = str(options.get("verify", "verify_none")).lower()
    if verify == "verify_peer":
        fail = str(options.get("fail_if_no_peer_cert", False)).lower() == "true"
        ctx.verify_mode = ssl.CERT_REQUIRED if fail else ssl.CERT_OPTIONAL
    elif verify == "verify_none":
        ctx.verify_mode = ssl.CERT_NONE
    else:
        raise ListenerError(f"{where}.ssl_options.verify: {verify!r} is not verify_peer or verify_none")
    versions = options.get("versions")
    if versions:
        try:
            wanted = sorted(_TLS_VERSIONS[str(v).lower()] for v in versions)
        except KeyError as exc:
            raise ListenerError(f"{where}.ssl_options.versions: unknown version {exc.args[0]!r}") from None
        ctx.minimum_version, ctx.maximum_version = wanted[0], wanted[-1]
    if options.get("ciphers"):
        ciphers = options["ciphers"]
        ctx.set_ciphers(":".join(ciphers) if isinstance(ciphers, list) else str(ciphers))
    return ctx


class _WsTransport:
    """What a Connection needs from a transport (connection.Transport), over an aiohttp WebSocket.

    Its tasks are kept: ``_sending`` writes what is pending, ``_closing`` closes the WebSocket once that is sent
    (or cancels the send after ``CLOSE_WAIT_S``); the WebSocket handler awaits ``wait_closed()`` before it returns.
    """

    CLOSE_WAIT_S = 5.0

    def __init__(self, ws: web.WebSocketResponse, loop: asyncio.AbstractEventLoop) -> None:
        self.ws = ws
        self.loop = loop
        self.readable = asyncio.Event()
        self.readable.set()
        self._sending: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if self._sending is None:
            self._sending = self.loop.create_task(self._send())

    async def _send(self) -> None:
        try:
            while self._pending:
                data = b"".join(self._pending)
                self._pending.clear()
                await self.ws.send_bytes(data)
        except (ConnectionError, RuntimeError):
            self._pending.clear()
        finally:
            self._sending = None

    def get_write_buffer_size(self) -> int:
        return sum(len(chunk) for chunk in self._pending)

    def pause_reading(self) -> None:
        self.readable.clear()

    def resume_reading(self) -> None:
        self.readable.set()

    def close(self) -> None:
        if self._closing is None:
            self._closing = self.loop.create_task(self._close())

    async def _close(self) -> None:
        sending = self._sending
        if sending is not None:
            await asyncio.wait([sending], timeout=self.CLOSE_WAIT_S)
            if not sending.done():
                sending.cancel()
        try:
            await self.ws.close()
        except (TimeoutError, ConnectionError, RuntimeError):
            pass                                      # the peer is gone: closed is closed

    async def wait_closed(self) -> None:
        if self._closing is not None:
            await self._closing

    def abort(self) -> None:
        self.close()


class _WsGate(asyncio.Protocol):
    """In front of aiohttp's RequestHandler on the WebSocket listener: ``max_conn_rate`` at accept, and
    cowboy's request timeout until the upgrade request is complete (then it only forwards)."""

    __slots__ = ("inner", "gates", "admitted", "broker", "listener_id", "transport", "timer")

    def __init__(self, inner: Any, gates: dict[Any, _WsGate], conn_rate: ConnectionRate | None, broker: Broker,
                 listener_id: str) -> None:
        self.inner = inner
        self.gates = gates
        self.admitted = conn_rate is None or conn_rate.admit()
        self.broker = broker
        self.listener_id = listener_id
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self.admitted:
            self.broker.metrics["listener.connection_rate_limited"] += 1
            log_event(log, "listener.connection_refused", logging.WARNING, listener=self.listener_id,
                      reason="max_conn_rate")
            self.transport.abort()
            return
        self.inner.connection_made(transport)
        self.gates[self.inner] = self
        self.timer = asyncio.get_running_loop().call_later(WS_REQUEST_TIMEOUT_S, self._request_timeout)

    def request_complete(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _request_timeout(self) -> None:
        self.timer = None
        self.gates.pop(self.inner, None)
        log_event(log, "listener.request_timeout", listener=self.listener_id)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_REQUEST_TIMEOUT_RESPONSE)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.request_complete()
        self.gates.pop(self.inner, None)
        if self.admitted:
            self.inner.connection_lost(exc)
        self.inner = None                           # the handler and its buffers go now, not with this object


class Listeners:
    """Start and stop every enabled MQTT listener of the configuration."""

    def __init__(self, broker: Broker, listener_configs: list[ListenerConfig]) -> None:
        self.broker = broker
        self.configs = listener_configs
        self.servers: list[asyncio.AbstractServer] = []
        self.runners: list[web.AppRunner] = []
        self.bound: dict[str, tuple[str, int]] = {}   # listener id → (host, port) actually bound

    async def start(self) -> None:
        for cfg in self.configs:
            if not cfg.enable:
                continue
            if cfg.type in ("tcp", "ssl"):
                await self._start_stream(cfg)
            elif cfg.type == "ws":
                await self._start_ws(cfg)
            else:
                raise ListenerError(f"listeners.{cfg.type}.{cfg.name}: listener type {cfg.type!r} is not "
                                    "supported by the stand-in (tcp, ssl, ws)")

    async def _start_stream(self, cfg: ListenerConfig) -> None:
        limit = _Limit(cfg.max_connections)
        conn_rate = ConnectionRate(cfg.max_conn) if cfg.max_conn else None
        context = ssl_context(cfg.ssl_options, f"listeners.ssl.{cfg.name}") if cfg.type == "ssl" else None
        closed_reason = "ssl_closed" if cfg.type == "ssl" else "tcp_closed"
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: MqttProtocol(self.broker, cfg, limit, closed_reason, conn_rate), cfg.host, cfg.port,
            ssl=context, ssl_handshake_timeout=cfg.handshake_timeout_s if context else None,
            reuse_address=True, backlog=1024)
        self.servers.append(server)
        self.bound[cfg.id] = server.sockets[0].getsockname()[:2]

    async def _start_ws(self, cfg: ListenerConfig) -> None:
        limit = _Limit(cfg.max_connections)
        broker = self.broker
        listener_id = cfg.id

        async def handler(request: web.Request) -> web.StreamResponse:
            gate = gates.pop(request.protocol, None)
            if gate is not None:
                gate.request_complete()
            ws = web.WebSocketResponse(protocols=("mqtt", "mqttv3.1"), max_msg_size=broker.mqtt.max_packet_size + 8,
                                       autoping=True)
            if not ws.can_prepare(request).ok:
                # close: the next request on this connection would not be under a request timeout
                request.protocol.force_close()
                return web.Response(status=400, text="expected a WebSocket upgrade with subprotocol mqtt")
            if not broker.accepting or not limit.acquire():
                return web.Response(status=503, text="max_connections")
            transport: _WsTransport | None = None
            try:
                await ws.prepare(request)
                loop = asyncio.get_running_loop()
                transport = _WsTransport(ws, loop)
                peer = request.transport.get_extra_info("peername") if request.transport else None
                sock = request.transport.get_extra_info("sockname") if request.transport else None
                conn = Connection(broker, transport, listener_id, peer or ("", 0), sock or ("", 0), "ws_closed",
                                  publish_quota(cfg))
                try:
                    async for message in ws:
                        if message.type == WSMsgType.BINARY:
                            conn.data_received(message.data)
                            if not transport.readable.is_set():
                                await transport.readable.wait()
                        elif message.type == WSMsgType.TEXT:
                            conn.close("protocol_error")      # MQTT over WebSocket is binary only
                            break
                        elif message.type == WSMsgType.ERROR:
                            break
                finally:
                    conn.connection_lost()
                return ws
            finally:
                limit.release()
                if transport is not None:
                    await transport.wait_closed()

        app = web.Application()
        app.router.add_get(cfg.mqtt_path, handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        http_server = runner.server
        assert http_server is not None                # set up
        gates: dict[Any, _WsGate] = {}                # aiohttp's RequestHandler → its gate, until the request is in
        conn_rate = ConnectionRate(cfg.max_conn) if cfg.max_conn else None
        loop = asyncio.get_running_loop()

        def gated() -> _WsGate:
            return _WsGate(http_server(), gates, conn_rate, self.broker, listener_id)

        server = await loop.create_server(gated, cfg.host, cfg.port, reuse_address=True, backlog=1024)
        self.servers.append(server)
        self.runners.append(runner)
        self.bound[cfg.id] = server.sockets[0].getsockname()[:2]

    async def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for runner in self.runners:
            await runner.cleanup()
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 2)
            except TimeoutError:
                pass
        self.servers.clear()
        self.runners.clear()
