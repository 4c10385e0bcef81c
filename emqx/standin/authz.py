"""Authorization exactly as EMQX's, with HTTP and file sources (docs/EMQX.md §4).

Order (emqx_access_control.erl / emqx_authz.erl): per-client cache → superuser → the ACL rules the authn answer
attached to the client (the ``client_info`` source, EMQX 5.8+) → sources in order → no_match.
File source (authz_file.py): the first acl.conf rule that matches decides, none → next source.
HTTP source: 204 → allow; 200 + JSON/form ``result`` allow/deny (``ignore``, missing or unknown → next source);
other statuses and failed/timed-out requests → next source. Cache entries are keyed by (action, topic, qos,
retain), live ``ttl``, at most ``max_size`` per client (oldest evicted), never for topics matching ``excludes``.
After every decision (cache hits included, source ``cache``) the ``on_authz_complete`` callback runs, which the
broker turns into the ``$events/client_check_authz_complete`` rule event.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fleetcore.logs import log_event

from .auth_http import HttpCallout
from .authn import client_variables
from .authz_file import FileRule, who_matches
from .clientinfo import ClientInfo
from .config import AuthzConfig
from .topics import filter_matches

log = logging.getLogger("emqx.standin.authz")

AuthzCallback = Callable[[ClientInfo, str, str, str, str], None]   # client, action, topic, result, source


class Authorizer:
    def __init__(self, config: AuthzConfig, on_authz_complete: AuthzCallback | None = None) -> None:
        self.config = config
        self.on_authz_complete = on_authz_complete
        # an HttpCallout per http source, the compiled rules (a list) per file source
        self.sources: list[HttpCallout | list[FileRule]] = []
        for i, s in enumerate(config.sources, start=1):
            if not s.enable:
                continue
            if s.type == "file":
                self.sources.append(s.file_rules)
                continue
            callout = HttpCallout(s.http, f"authorization.sources.{i}")
            callout.default_content_type = "application/json"
            self.sources.append(callout)
        self._cache: dict[str, OrderedDict[tuple, tuple[bool, float]]] = {}
        self.metrics = {"total": 0, "allow": 0, "deny": 0, "cache_hit": 0, "cache_miss": 0, "nomatch": 0,
                        "superuser": 0}

    async def start(self) -> None:
        for source in self.sources:
            if isinstance(source, HttpCallout):
                await source.start()

    async def stop(self) -> None:
        for source in self.sources:
            if isinstance(source, HttpCallout):
                await source.stop()

    # -- cache -------------------------------------------------------------------------------------------
    def clear_cache(self, clientid: str | None = None) -> None:
        """Drop cached decisions of one client, or of all clients (DELETE …/authorization/cache)."""
        if clientid is None:
            self._cache.clear()
        else:
            self._cache.pop(clientid, None)

    def forget(self, clientid: str) -> None:
        """The client's connection ended: its cache goes with it (EMQX keeps it in the connection process)."""
        self._cache.pop(clientid, None)

    def cached(self, clientid: str) -> list[dict[str, Any]]:
        """The live cache entries of a client (GET /clients/{id}/authorization/cache)."""
        now = time.monotonic()
        return [{"action": k[0], "topic": k[1], "qos": k[2], "retain": k[3], "result": "allow" if v[0] else "deny",
                 "updated_time": int((time.time() - (self.config.cache_ttl_s - (v[1] - now))) * 1000)}
                for k, v in self._cache.get(clientid, {}).items() if v[1] > now]

    def _cacheable(self, topic: str) -> bool:
        return self.config.cache_enable and not any(filter_matches(f, topic) or f == topic
                                                    for f in self.config.cache_excludes)

    # -- decision ----------------------------------------------------------------------------------------
    async def authorize(self, client: ClientInfo, action: str, topic: str, qos: int = 0,
                        retain: bool = False) -> bool:
        """Whether ``client`` may ``action`` ("publish" | "subscribe") ``topic`` (a name, or a filter)."""
        self.metrics["total"] += 1
        key = (action, topic, qos, retain)
        cacheable = self._cacheable(topic)
        if cacheable:
            entries = self._cache.get(client.clientid)
            if entries is not None:
                hit = entries.get(key)
                if hit is not None:
                    if hit[1] > time.monotonic():
                        self.metrics["cache_hit"] += 1
                        return self._done(client, action, topic, hit[0], "cache")
                    del entries[key]
            self.metrics["cache_miss"] += 1
        allowed, source = await self._decide(client, action, topic, qos, retain)
        if cacheable:
            entries = self._cache.setdefault(client.clientid, OrderedDict())
            entries[key] = (allowed, time.monotonic() + self.config.cache_ttl_s)
            entries.move_to_end(key)
            while len(entries) > self.config.cache_max_size:
                entries.popitem(last=False)
        return self._done(client, action, topic, allowed, source)

    def _done(self, client: ClientInfo, action: str, topic: str, allowed: bool, source: str) -> bool:
        self.metrics["allow" if allowed else "deny"] += 1
        if not allowed:
            log_event(log, "authz.deny", clientid=client.clientid, action=action, topic=topic, source=source)
        if self.on_authz_complete is not None:
            try:
                self.on_authz_complete(client, action, topic, "allow" if allowed else "deny", source)
            except Exception:  # a rule-event failure must not change the decision
                log.exception("authz.callback_failed")
        return allowed

    async def _decide(self, client: ClientInfo, action: str, topic: str, qos: int,
                      retain: bool) -> tuple[bool, str]:
        if client.is_superuser:
            self.metrics["superuser"] += 1
            return True, "superuser"
        for rule in client.acl:
            if _rule_matches(rule, client, action, topic, qos, retain):
                return rule["permission"] == "allow", "client_info"
        variables = client_variables(client)
        variables.update({"topic": topic, "action": action, "qos": qos, "retain": retain,
                          "access": "1" if action == "subscribe" else "2"})
        for source in self.sources:
            if not isinstance(source, HttpCallout):
                for file_rule in source:
                    if who_matches(file_rule.who, client.username, client.clientid, client.peerhost) and \
                            _rule_matches(file_rule.rule, client, action, topic, qos, retain):
                        return file_rule.permission == "allow", "file"
                continue
            status, body = await source.call(variables)
            if status == 204:
                return True, "http"
            if status == 200:
                if body is None:
                    log_event(log, "authz_http_response_incorrect", level=logging.WARNING, clientid=client.clientid)
                    continue
                result = body.get("result")
                if result == "allow":
                    return True, "http"
                if result == "deny":
                    return False, "http"
                if result != "ignore":
                    log_event(log, "authz_http_response_incorrect", level=logging.WARNING, clientid=client.clientid)
                continue
            if status:
                log_event(log, "unexpected_authz_http_response", level=logging.DEBUG, clientid=client.clientid,
                          status=status)
        self.metrics["nomatch"] += 1
        return self.config.no_match == "allow", "default"


def _rule_matches(rule: dict, client: ClientInfo, action: str, topic: str, qos: int, retain: bool) -> bool:
    """One authn-delivered rule (emqx_authz_rule): action, QoS, retain, then the topic. A rule topic may use
    ${clientid} / ${username}; ``eq <filter>`` matches that filter literally (as in acl.conf)."""
    if rule["action"] not in ("all", action):
        return False
    if rule["qos"] is not None and qos not in rule["qos"]:
        return False
    if rule["retain"] != "all" and action == "publish" and bool(retain) != rule["retain"]:
        return False
    for pattern in rule["topics"]:
        if pattern.startswith("eq "):
            if pattern[3:] == topic:
                return True
            continue
        rendered = pattern.replace("${clientid}", client.clientid).replace("${username}", client.username or "")
        if filter_matches(rendered, topic):
            return True
    return False
