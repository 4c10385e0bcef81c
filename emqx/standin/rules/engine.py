"""The rule engine: match each message/event against the rules, evaluate their SQL, hand outputs to actions.

``publish`` is the broker's hot path, and it does what EMQX's ``message.publish`` hook does inside
``emqx_broker:publish``: evaluate the matching rules and hand each output to its actions' buffer workers, then
return without waiting for them (emqx_rule_runtime ``do_handle_action2`` casts to the buffer worker). The broker
acknowledges the message right after (emqx_channel ``do_publish``: PUBACK once ``emqx_broker:publish`` returned),
so a PUBACK means "the broker has it", not "it is stored": what an action later fails or drops is counted in the
rule and action metrics (``GET /api/v5/rules/{id}/metrics``, ``GET /api/v5/actions/{id}/metrics``), not told to
the client. ``on_publish`` awaits the actions' replies as well — for tests that need to know the outcome.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fleetcore.logs import log_event

from ..clientinfo import ClientInfo, Message
from ..config import BrokerConfig
from ..topics import filter_matches
from . import events
from .actions.base import BufferedAction, RuleDeliveryError
from .actions.http import HttpAction, HttpConnector
from .actions.pgsql import PgsqlAction, PgsqlConnector
from .sql import EVENT_TOPICS, RuleSql, parse_rule_sql

log = logging.getLogger("emqx.standin.rules")

_TOPIC_CACHE_MAX = 50_000
# The counters of GET /api/v5/rules/{id}/metrics (emqx_rule_engine_api format_metrics).
_RULE_COUNTERS = ("matched", "passed", "failed", "failed.exception", "failed.no_result", "actions.total",
                  "actions.failed", "actions.failed.out_of_service", "actions.failed.unknown", "actions.success",
                  "actions.discarded")


class Rule:
    def __init__(self, rule_id: str, sql: RuleSql, actions: list[BufferedAction]) -> None:
        self.id = rule_id
        self.sql = sql
        self.actions = actions
        self.counters = dict.fromkeys(_RULE_COUNTERS, 0)

    def evaluate(self, env: dict[str, Any]) -> dict[str, Any] | None:
        counters = self.counters
        counters["matched"] += 1
        try:
            output = self.sql.select(env)
        except Exception as exc:  # noqa: BLE001 - a function error fails this rule for this message only
            counters["failed"] += 1
            counters["failed.exception"] += 1
            log_event(log, "rule.exception", level=logging.WARNING, rule=self.id, clientid=env.get("clientid"),
                      error=f"{type(exc).__name__}: {exc}"[:200])
            return None
        if output is None:
            counters["failed.no_result"] += 1
            return None
        counters["passed"] += 1
        return output

    def track(self, future: asyncio.Future) -> None:
        self.counters["actions.total"] += 1
        future.add_done_callback(self._action_done)

    def _action_done(self, future: asyncio.Future) -> None:
        # emqx_rule_runtime do_inc_action_metrics: a stopped action is out_of_service, any other failure
        # (unrecoverable error, expired, buffer overflow) is unknown.
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            self.counters["actions.failed"] += 1
            out_of_service = future.cancelled() or getattr(error, "out_of_service", False)
            self.counters["actions.failed.out_of_service" if out_of_service else "actions.failed.unknown"] += 1
        else:
            self.counters["actions.success"] += 1


class RuleEngine:
    """Rules + connectors + actions built from a BrokerConfig."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.node = config.node_name
        self.ignore_sys_message = config.ignore_sys_message
        self.pg_connectors = {name: PgsqlConnector(c) for name, c in config.pgsql_connectors.items() if c.enable}
        self.http_connectors = {name: HttpConnector(c) for name, c in config.http_connectors.items() if c.enable}
        self.actions: dict[str, BufferedAction] = {}
        for action_id, action_cfg in config.actions.items():
            if not action_cfg.enable:
                continue
            if action_cfg.type == "pgsql" and action_cfg.connector in self.pg_connectors:
                self.actions[action_id] = PgsqlAction(action_cfg, self.pg_connectors[action_cfg.connector])
            elif action_cfg.type == "http" and action_cfg.connector in self.http_connectors:
                self.actions[action_id] = HttpAction(action_cfg, self.http_connectors[action_cfg.connector])
        self.rules: list[Rule] = []
        for rule_cfg in config.rules.values():
            if not rule_cfg.enable:
                continue
            actions = [self.actions[a] for a in rule_cfg.actions if a in self.actions]
            self.rules.append(Rule(rule_cfg.id, parse_rule_sql(rule_cfg.sql), actions))
        self._topic_rules: dict[str, list[Rule]] = {}
        self._event_rules: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for event in rule.sql.events:
                self._event_rules.setdefault(event, []).append(rule)
        self.event_counters = {"fired": 0, "failed": 0}
        self._background: set[asyncio.Future] = set()
        self.started = False

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open connectors (a database that is down is not an error: requests are buffered) and workers."""
        for http_connector in self.http_connectors.values():
            await http_connector.start()
        for pg_connector in self.pg_connectors.values():
            await pg_connector.start()
        for action in self.actions.values():
            await action.start()
        self.started = True
        log_event(log, "rules.started", rules=[r.id for r in self.rules], actions=sorted(self.actions),
                  connectors={n: c.status for n, c in self.pg_connectors.items()})

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush buffered requests (up to ``timeout`` s), then close connectors."""
        await asyncio.gather(*(a.stop(timeout) for a in self.actions.values()))
        for pg_connector in self.pg_connectors.values():
            await pg_connector.stop()
        for http_connector in self.http_connectors.values():
            await http_connector.stop()
        self.started = False

    # -- messages ----------------------------------------------------------------------------------------
    def rules_for_topic(self, topic: str) -> list[Rule]:
        rules = self._topic_rules.get(topic)
        if rules is None:
            if self.ignore_sys_message and topic.startswith("$SYS/"):
                rules = []
            else:
                rules = [r for r in self.rules if any(filter_matches(f, topic) for f in r.sql.topic_filters)]
            if len(self._topic_rules) >= _TOPIC_CACHE_MAX:
                self._topic_rules.clear()
            self._topic_rules[topic] = rules
        return rules

    def message_columns(self, msg: Message) -> dict[str, Any]:
        """The message.publish columns (emqx_rule_events.erl eventmsg_publish/1 + with_basic_columns/3)."""
        return {
            "id": msg.id,
            "clientid": msg.clientid,
            "username": msg.username,
            "payload": msg.payload,
            "peerhost": msg.peerhost,
            "topic": msg.topic,
            "qos": msg.qos,
            "flags": {"retain": msg.retain, "dup": False},
            "pub_props": {},
            "publish_received_at": msg.publish_received_at,
            "client_attrs": msg.client_attrs,
            "event": "message.publish",
            "timestamp": int(time.time() * 1000),
            "node": self.node,
        }

    def publish(self, msg: Message) -> list[asyncio.Future]:
        """Run the matching rules and queue their outputs on the actions; never waits, never raises for an
        action. Returns the actions' replies (futures), which the broker does not wait for."""
        rules = self.rules_for_topic(msg.topic)
        if not rules:
            return []
        env = self.message_columns(msg)
        futures: list[asyncio.Future] = []
        for rule in rules:
            output = rule.evaluate(env)
            if output is None:
                continue
            for action in rule.actions:
                future = action.submit(output, msg.clientid)
                rule.track(future)
                futures.append(future)
        return futures

    async def on_publish(self, msg: Message) -> None:
        """``publish``, then wait for every action's reply; raises RuleDeliveryError if one gave up."""
        futures = self.publish(msg)
        if not futures:
            return
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result if isinstance(result, RuleDeliveryError) else RuleDeliveryError(str(result))

    # -- events ------------------------------------------------------------------------------------------
    def fire_event(self, name: str, fields: dict[str, Any]) -> None:
        """Queue an event ("$events/client_connected"…) for its rules; never blocks, never raises."""
        event = EVENT_TOPICS.get(name, name)
        rules = self._event_rules.get(event)
        if not rules:
            return
        self.event_counters["fired"] += 1
        env = dict(fields)
        env.setdefault("event", event)
        env.setdefault("timestamp", int(time.time() * 1000))
        env.setdefault("node", self.node)
        clientid = str(env.get("clientid") or "")
        for rule in rules:
            output = rule.evaluate(env)
            if output is None:
                continue
            for action in rule.actions:
                future = action.submit(output, clientid)
                rule.track(future)
                self._background.add(future)
                future.add_done_callback(self._event_done)

    def _event_done(self, future: asyncio.Future) -> None:
        self._background.discard(future)
        if not future.cancelled() and future.exception() is not None:
            self.event_counters["failed"] += 1

    def client_connected(self, client: ClientInfo, *, sockname: str = "", expiry_interval: int = 0) -> None:
        self.fire_event(events.CONNECTED, events.connected_fields(client, sockname=sockname,
                                                                  expiry_interval=expiry_interval))

    def client_disconnected(self, client: ClientInfo, reason: str, *, disconnected_at: int | None = None,
                            sockname: str = "") -> None:
        fields = events.disconnected_fields(client, reason, disconnected_at=disconnected_at, sockname=sockname)
        self.fire_event(events.DISCONNECTED, fields)

    def authz_complete(self, client: ClientInfo, action: str, topic: str, result: str, source: str) -> None:
        """Signature of Authorizer's on_authz_complete callback: pass ``engine.authz_complete`` directly."""
        self.fire_event(events.AUTHZ_COMPLETE, events.authz_complete_fields(client, action, topic, result, source))

    # -- observability -----------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        return {
            "rules": {r.id: dict(r.counters) for r in self.rules},
            "actions": {a.id: a.metrics() for a in self.actions.values()},
            "action_status": {a.id: a.status for a in self.actions.values()},
            "connectors": {**{f"pgsql:{n}": c.status for n, c in self.pg_connectors.items()},
                           **{f"http:{n}": c.status for n, c in self.http_connectors.items()}},
            "events": dict(self.event_counters),
        }
