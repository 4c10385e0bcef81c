"""Wiring: configuration → authenticator, authorizer, rule engine, MQTT broker, listeners, REST API.

``StandinApp(config).start()`` brings everything up in dependency order; ``stop()`` shuts down gracefully:
stop accepting, stop reading from clients and let in-flight messages commit and be acknowledged (bounded),
close the clients (their wills are published), flush the rule engine's buffers (bounded), then stop the rest.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from fleetcore.logs import log_event

from .authn import Authenticator
from .authz import Authorizer
from .broker import Broker
from .clientinfo import ClientInfo
from .config import BrokerConfig
from .listeners import Listeners
from .rest_api import RestApi, load_api_keys

if TYPE_CHECKING:
    from .rules import RuleEngine

log = logging.getLogger("emqx.standin")

IMPLEMENTED = ("mqtt3.1.1+3.1 (mqtt5 refused with CONNACK 0x01)", "qos0/1/2", "retained", "last_will(authorized)",
               "persistent_sessions", "takeover", "keepalive", "max_packet_size", "idle_timeout",
               "max_connections", "authn:http", "authz:http+cache", "rules:pgsql/http", "rest:/api/v5 subset")
NOT_IMPLEMENTED = ("mqtt5", "shared_subscriptions($share)", "wss", "clustering", "persistence_across_restarts")


class StandinApp:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.authn: Authenticator | None = None
        self.authz: Authorizer | None = None
        self.rules: RuleEngine | None = None
        self.broker: Broker | None = None
        self.listeners: Listeners | None = None
        self.rest: RestApi | None = None
        self._authz_event_wanted = any("client_check_authz_complete" in rule.sql
                                       for rule in config.rules.values() if rule.enable)

    async def start(self) -> None:
        config = self.config
        api_keys = load_api_keys(config.api_key_bootstrap_file)
        self.authn = Authenticator(config.authentication)
        await self.authn.start()
        if config.rules:
            from .rules import RuleEngine
            self.rules = RuleEngine(config)
            await self.rules.start()
        self.authz = Authorizer(config.authorization, on_authz_complete=self._authz_complete)
        await self.authz.start()
        self.broker = Broker(config, self.authn, self.authz, self.rules)
        self.broker.start()
        self.listeners = Listeners(self.broker, config.listeners)
        await self.listeners.start()
        self.rest = RestApi(self.broker, self.authz, self.rules, config, api_keys)
        if config.dashboard_port:
            await self.rest.start(config.dashboard_host, config.dashboard_port)
        config.log_summary()
        log_event(log, "standin.started", node=config.node_name,
                  listeners={lid: f"{h}:{p}" for lid, (h, p) in self.listeners.bound.items()},
                  dashboard=f"{self.rest.bound[0]}:{self.rest.bound[1]}" if self.rest.bound else "disabled",
                  api_keys=len(api_keys), rules=len(config.rules), implemented=list(IMPLEMENTED),
                  not_implemented=list(NOT_IMPLEMENTED))

    def _authz_complete(self, client: ClientInfo, action: str, topic: str, result: str, source: str) -> None:
        # only when a rule selects the event: building its columns for every publish would cost for nothing
        if self.rules is not None and self._authz_event_wanted:
            self.rules.authz_complete(client, action, topic, result, source)

    async def stop(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        broker = self.broker
        if self.rest is not None:
            self.rest.running = False                    # /status → 503 while stopping
        if broker is not None:
            broker.accepting = False
        if self.listeners is not None:
            await self.listeners.stop_accepting()
        if broker is not None:
            await _drain_connections(broker, min(5.0, max(0.0, deadline - time.monotonic())))
            await broker.stop(timeout=max(0.5, min(3.0, deadline - time.monotonic())))
        if self.rules is not None:
            try:
                await asyncio.wait_for(self.rules.stop(), max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                log_event(log, "standin.rules_flush_timeout", logging.ERROR)
        for part in (self.authz, self.authn):
            if part is not None:
                await part.stop()
        if self.listeners is not None:
            await self.listeners.stop()
        if self.rest is not None:
            await self.rest.stop()
        log_event(log, "standin.stopped")


async def _drain_connections(broker: Broker, timeout: float) -> None:
    """Stop reading from every client and wait (bounded) until messages already read are processed and acked."""
    conns = [s.conn for s in broker.sessions.values() if s.conn is not None and s.conn.open]
    for conn in conns:
        conn.pause_reading()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(not c.open or not c.busy for c in conns):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0)          # let the last acks be written
