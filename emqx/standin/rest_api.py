"""EMQX's REST API subset on the dashboard listener (docs/EMQX.md §6): status, publish, clients, subscriptions,
authz cache, the ban list, stats, rules; and the read-only dashboard page (dashboard.py), whose login token may GET.

``GET /status`` (no auth) answers like EMQX. Everything under ``/api/v5`` needs HTTP Basic auth with an API key
from ``api_key.bootstrap_file`` (``key:secret[:role]`` lines); a bad key gets 401 ``BAD_API_KEY_OR_SECRET``,
a ``viewer`` key may only GET and a ``publisher`` key may only publish (403 ``UNAUTHORIZED_ROLE``).
Answer shapes and codes follow EMQX 5.x (emqx_mgmt_api_publish.erl, emqx_mgmt_api_clients.erl).
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from fleetcore.logs import log_event

from .banned import KINDS as BAN_KINDS
from .banned import Ban
from .broker import Broker
from .config import BrokerConfig
from .dashboard import Dashboard
from .hooks import AuthzHooks, RuleHooks
from .session import Session
from .topics import valid_topic_name

log = logging.getLogger("emqx.standin.rest_api")

ROLES = ("administrator", "viewer", "publisher")


class ApiKeyError(ValueError):
    """The bootstrap file cannot be used."""


def load_api_keys(path: str) -> dict[str, tuple[str, str]]:
    """key → (secret, role) from an EMQX bootstrap file; empty lines skipped, no comments (as EMQX)."""
    keys: dict[str, tuple[str, str]] = {}
    if not path:
        return keys
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ApiKeyError(f"api_key.bootstrap_file {path}: {exc.strerror}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ApiKeyError(f"api_key.bootstrap_file line {number}: expected key:secret[:role]")
        role = parts[2] if len(parts) == 3 else "administrator"
        if role not in ROLES:
            raise ApiKeyError(f"api_key.bootstrap_file line {number}: invalid_role {role!r}")
        keys[parts[0]] = (parts[1], role)
    return keys


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


class RestApi:
    def __init__(self, broker: Broker, authz: AuthzHooks, rules: RuleHooks | None, config: BrokerConfig,
                 api_keys: dict[str, tuple[str, str]]) -> None:
        self.broker = broker
        self.authz = authz
        self.rules = rules
        self.config = config
        self.api_keys = api_keys
        self.running = False
        self.runner: web.AppRunner | None = None
        self.bound: tuple[str, int] | None = None
        self.dashboard = Dashboard(config.dashboard_username, config.dashboard_password)

    # -- app --------------------------------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware], client_max_size=4 * 1024 * 1024)
        r = app.router
        r.add_get("/status", self.status)
        r.add_get("/api/v5/status", self.status)
        r.add_post("/api/v5/publish", self.publish)
        r.add_get("/api/v5/clients", self.list_clients)
        r.add_get("/api/v5/clients/{clientid}", self.get_client)
        r.add_delete("/api/v5/clients/{clientid}", self.kick_client)
        r.add_get("/api/v5/clients/{clientid}/subscriptions", self.client_subscriptions)
        r.add_get("/api/v5/subscriptions", self.list_subscriptions)
        r.add_get("/api/v5/clients/{clientid}/authorization/cache", self.get_client_cache)
        r.add_delete("/api/v5/clients/{clientid}/authorization/cache", self.clear_client_cache)
        r.add_delete("/api/v5/authorization/cache", self.clear_all_cache)
        r.add_get("/api/v5/banned", self.list_banned)
        r.add_post("/api/v5/banned", self.create_ban)
        r.add_delete("/api/v5/banned", self.clear_banned)
        r.add_delete("/api/v5/banned/{as}/{who}", self.delete_ban)
        r.add_get("/api/v5/metrics", self.metrics)
        r.add_get("/api/v5/stats", self.stats)
        r.add_get("/api/v5/rules", self.list_rules)
        r.add_get("/api/v5/rules/{rule_id}", self.get_rule)
        r.add_get("/api/v5/rules/{rule_id}/metrics", self.rule_metrics)
        r.add_get("/api/v5/actions/{action_id}/metrics", self.action_metrics)
        r.add_get("/api/v5/actions/{action_id}", self.get_action)
        self.dashboard.install(app)
        return app

    async def start(self, host: str, port: int) -> None:
        self.runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        addresses = self.runner.addresses            # the bound port when configured with port 0
        self.bound = addresses[0][:2] if addresses else (host, port)
        self.running = True

    async def stop(self) -> None:
        self.running = False
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/api/v5/") or path in ("/api/v5/status", "/api/v5/login", "/api/v5/logout"):
            return await handler(request)
        role = self._authenticate(request.headers.get("Authorization", ""))
        if role is None:
            log_event(log, "api.unauthorized", path=path, remote=request.remote)
            return _error(401, "BAD_API_KEY_OR_SECRET", "Check api_key/api_secret")
        if role == "viewer" and request.method != "GET":
            return _error(403, "UNAUTHORIZED_ROLE", "User don't has permission to access this resource")
        if role == "publisher" and not (request.method == "POST" and path == "/api/v5/publish"):
            return _error(403, "UNAUTHORIZED_ROLE", "User don't has permission to access this resource")
        return await handler(request)

    def _authenticate(self, header: str) -> str | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            return self.dashboard.role_of(value.strip())
        if scheme.lower() != "basic" or not value:
            return None
        try:
            key, sep, secret = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        entry = self.api_keys.get(key)
        if not sep or entry is None or not hmac.compare_digest(entry[0].encode(), secret.encode()):
            return None
        return entry[1]

    # -- handlers ---------------------------------------------------------------------------------------------
    async def status(self, request: web.Request) -> web.Response:
        node = self.config.node_name
        if self.running and self.broker.accepting:
            if request.query.get("format") == "json":
                return web.json_response({"node": node, "node_status": "running", "rel_vsn": "standin",
                                          "app_status": "running"})
            return web.Response(text=f"Node {node} is started\nemqx is running")
        if request.query.get("format") == "json":
            return web.json_response({"node": node, "node_status": "stopping", "app_status": "not_running"},
                                     status=503)
        return web.Response(status=503, text=f"Node {node} is stopping\nemqx is not_running")

    async def publish(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "BAD_REQUEST", "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "BAD_REQUEST", "request body must be a JSON object")
        topic = body.get("topic")
        payload = body.get("payload")
        if not isinstance(topic, str):
            return _error(400, "BAD_REQUEST", "topic is required")
        if not isinstance(payload, str):
            return _error(400, "BAD_REQUEST", "payload is required and must be a string")
        if not valid_topic_name(topic):
            return web.json_response({"reason_code": 144, "message": "topic_name_invalid"}, status=400)
        encoding = body.get("payload_encoding", body.get("encoding", "plain"))
        qos, retain = body.get("qos", 0), body.get("retain", False)
        if qos not in (0, 1, 2) or isinstance(qos, bool) or not isinstance(retain, bool):
            return _error(400, "BAD_REQUEST", "qos must be 0, 1 or 2 and retain a boolean")
        if encoding == "plain":
            data = payload.encode("utf-8")
        elif encoding == "base64":
            try:
                data = base64.b64decode(payload, validate=True)
            except binascii.Error:
                return _error(400, "BAD_REQUEST", "payload is not valid base64")
        else:
            return _error(400, "BAD_REQUEST", "payload_encoding must be plain or base64")
        if len(data) > self.broker.mqtt.max_packet_size:
            # EMQX answers 0x97 quota_exceeded/"packet_too_large" (0x95 is not a PUBACK code): emqx_mgmt_api_publish
            return web.json_response({"reason_code": 151, "message": "packet_too_large"}, status=400)
        if not self.broker.accepting:
            return web.json_response({"reason_code": 131, "message": "failed_to_dispatch"}, status=503)
        message_id, delivered = self.broker.publish_from_api(topic, data, qos, retain)
        if delivered:
            return web.json_response({"id": message_id})
        return web.json_response({"reason_code": 16, "message": "no_matching_subscribers"}, status=202)

    async def list_clients(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            page = max(1, int(query.get("page", 1)))
            limit = min(10000, max(1, int(query.get("limit", 100))))
        except ValueError:
            return _error(400, "INVALID_PARAMETER", "page and limit must be integers")
        items = [self.broker.client_info(s) for s in self.broker.sessions.values()]
        for key in ("clientid", "username", "ip_address"):
            if key in query:
                wanted = query.getall(key)
                items = [c for c in items if str(c[key]) in wanted]
        if "conn_state" in query:
            want_connected = query["conn_state"] == "connected"
            items = [c for c in items if c["connected"] == want_connected]
        if "like_clientid" in query:
            items = [c for c in items if query["like_clientid"] in c["clientid"]]
        if "like_username" in query:
            items = [c for c in items if c["username"] and query["like_username"] in c["username"]]
        start = (page - 1) * limit
        data = items[start:start + limit]
        return web.json_response({"data": data, "meta": {"page": page, "limit": limit, "count": len(items),
                                                         "hasnext": start + limit < len(items)}})

    # -- ban list (emqx_mgmt_api_banned.erl) --------------------------------------------------------------------
    async def list_banned(self, request: web.Request) -> web.Response:
        try:
            page = max(1, int(request.query.get("page", 1)))
            limit = min(10000, max(1, int(request.query.get("limit", 100))))
        except ValueError:
            return _error(400, "INVALID_PARAMETER", "page and limit must be integers")
        items = [_ban_json(ban) for ban in self.broker.banned.entries()]
        start = (page - 1) * limit
        return web.json_response({"data": items[start:start + limit],
                                  "meta": {"page": page, "limit": limit, "count": len(items),
                                           "hasnext": start + limit < len(items)}})

    async def create_ban(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "BAD_REQUEST", "the body is not JSON")
        try:
            ban = _ban_from(body)
        except ValueError as exc:
            return _error(400, "BAD_REQUEST", str(exc))
        existing = self.broker.banned.create(ban)
        if existing is not None:
            return _error(400, "ALREADY_EXISTS", json.dumps(_ban_json(existing)))
        log_event(log, "api.ban_created", kind=ban.kind, who=ban.who, until=ban.until)
        return web.json_response(_ban_json(ban))

    async def delete_ban(self, request: web.Request) -> web.Response:
        kind, who = request.match_info["as"], request.match_info["who"]
        if not self.broker.banned.delete(kind, who):
            return _error(404, "NOT_FOUND", f"{kind}: {who} not found")
        log_event(log, "api.ban_deleted", kind=kind, who=who)
        return web.Response(status=204)

    async def clear_banned(self, request: web.Request) -> web.Response:
        self.broker.banned.clear()
        return web.Response(status=204)

    def _session(self, request: web.Request) -> Session | None:
        return self.broker.sessions.get(request.match_info["clientid"])

    async def get_client(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return _error(404, "CLIENTID_NOT_FOUND", "Client ID not found")
        return web.json_response(self.broker.client_info(session))

    async def kick_client(self, request: web.Request) -> web.Response:
        clientid = request.match_info["clientid"]
        if not self.broker.kick(clientid):
            return _error(404, "CLIENTID_NOT_FOUND", "Client ID not found")
        log_event(log, "api.client_kicked", clientid=clientid)
        return web.Response(status=204)

    async def client_subscriptions(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return _error(404, "CLIENTID_NOT_FOUND", "Client ID not found")
        return web.json_response([{"topic": t, "qos": q, "clientid": session.clientid, "node": self.config.node_name}
                                  for t, q in session.subscriptions.items()])

    async def list_subscriptions(self, request: web.Request) -> web.Response:
        """GET /api/v5/subscriptions (emqx_mgmt_api_subscriptions.erl): every subscription, paged."""
        try:
            page = max(1, int(request.query.get("page", 1)))
            limit = min(10000, max(1, int(request.query.get("limit", 100))))
        except ValueError:
            return _error(400, "INVALID_PARAMETER", "page and limit must be integers")
        items = [{"clientid": s.clientid, "topic": t, "qos": q, "node": self.config.node_name}
                 for s in self.broker.sessions.values() for t, q in s.subscriptions.items()]
        if "clientid" in request.query:
            items = [i for i in items if i["clientid"] == request.query["clientid"]]
        start = (page - 1) * limit
        return web.json_response({"data": items[start:start + limit],
                                  "meta": {"page": page, "limit": limit, "count": len(items),
                                           "hasnext": start + limit < len(items)}})

    async def get_client_cache(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None or not session.connected:
            return _error(404, "CLIENTID_NOT_FOUND", "Client ID not found")
        return web.json_response(self.authz.cached(session.clientid))

    async def clear_client_cache(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None or not session.connected:
            return _error(404, "CLIENTID_NOT_FOUND", "Client ID not found")
        self.authz.clear_cache(session.clientid)
        log_event(log, "api.authz_cache_cleared", clientid=session.clientid)
        return web.Response(status=204)

    async def clear_all_cache(self, request: web.Request) -> web.Response:
        self.authz.clear_cache(None)
        log_event(log, "api.authz_cache_cleared", clientid="all")
        return web.Response(status=204)

    async def metrics(self, request: web.Request) -> web.Response:
        data = {"node": self.config.node_name, **dict(sorted(self.broker.metrics.items()))}
        for name, value in self.authz.metrics.items():
            data[f"authorization.{name}"] = value
        if request.query.get("aggregate") == "true":
            return web.json_response({k: v for k, v in data.items() if k != "node"})
        return web.json_response([data])

    async def stats(self, request: web.Request) -> web.Response:
        stats = self.broker.stats()
        if request.query.get("aggregate") == "true":
            return web.json_response(stats)
        return web.json_response([{"node": self.config.node_name, **stats}])

    def _rule(self, rule_id: str) -> dict[str, Any] | None:
        rule = self.config.rules.get(rule_id)
        if rule is None:
            return None
        return {"id": rule.id, "name": rule.id, "sql": rule.sql, "actions": list(rule.actions),
                "enable": rule.enable, "description": rule.description, "from": _rule_from(rule.sql)}

    async def list_rules(self, request: web.Request) -> web.Response:
        data = [self._rule(rule_id) for rule_id in self.config.rules]
        return web.json_response({"data": data, "meta": {"page": 1, "limit": 100, "count": len(data),
                                                         "hasnext": False}})

    async def get_rule(self, request: web.Request) -> web.Response:
        rule = self._rule(request.match_info["rule_id"])
        if rule is None:
            return _error(404, "NOT_FOUND", "Rule not found")
        return web.json_response(rule)

    async def rule_metrics(self, request: web.Request) -> web.Response:
        """GET /api/v5/rules/{id}/metrics: EMQX's shape and counters (emqx_rule_engine_api ``format_metrics``)."""
        rule_id = request.match_info["rule_id"]
        if rule_id not in self.config.rules:
            return _error(404, "NOT_FOUND", "Rule not found")
        all_metrics = self.rules.metrics() if self.rules is not None else {}
        counters = (all_metrics.get("rules") or {}).get(rule_id) or dict.fromkeys(RULE_METRICS, 0)
        # Rates are not measured by the stand-in (docs/BROKER_STANDIN.md): reported as 0.0.
        rule_metrics = {**counters, "matched.rate": 0.0, "matched.rate.max": 0.0, "matched.rate.last5m": 0.0}
        return web.json_response({"id": rule_id, "metrics": rule_metrics,
                                  "node_metrics": [{"node": self.config.node_name, "metrics": rule_metrics}]})

    def _action_metrics(self, action_id: str) -> dict[str, Any] | None:
        all_metrics = self.rules.metrics() if self.rules is not None else {}
        metrics = (all_metrics.get("actions") or {}).get(action_id)
        if metrics is None:
            return None
        # emqx_bridge_v2_api format_metrics: these keys and no others (retried.success/failed are left out).
        shown = {key: metrics.get(key, 0) for key in ACTION_METRICS}
        shown.update(rate=0.0, rate_last5m=0.0, rate_max=0.0)
        return shown

    async def action_metrics(self, request: web.Request) -> web.Response:
        """GET /api/v5/actions/{type:name}/metrics (EMQX 5.x bridge v2 API, emqx_bridge_v2_api)."""
        metrics = self._action_metrics(request.match_info["action_id"])
        if metrics is None:
            return _error(404, "NOT_FOUND", "Action not found")
        return web.json_response({"metrics": metrics,
                                  "node_metrics": [{"node": self.config.node_name, "metrics": metrics}]})

    async def get_action(self, request: web.Request) -> web.Response:
        """GET /api/v5/actions/{type:name}: what the action is and its status (a subset of EMQX's answer)."""
        action_id = request.match_info["action_id"]
        action = self.config.actions.get(action_id)
        all_metrics = self.rules.metrics() if self.rules is not None else {}
        status = (all_metrics.get("action_status") or {}).get(action_id)
        if action is None or status is None:
            return _error(404, "NOT_FOUND", "Action not found")
        return web.json_response({"type": action.type, "name": action_id.split(":", 1)[1],
                                  "enable": action.enable, "connector": action.connector, "status": status,
                                  "node_status": [{"node": self.config.node_name, "status": status}]})


# The counters of EMQX's rule and action metrics APIs, listed even when no rule engine runs.
RULE_METRICS = ("matched", "passed", "failed", "failed.exception", "failed.no_result", "actions.total",
                "actions.failed", "actions.failed.out_of_service", "actions.failed.unknown", "actions.success",
                "actions.discarded")
ACTION_METRICS = ("dropped", "dropped.other", "dropped.expired", "dropped.queue_full", "dropped.resource_not_found",
                  "dropped.resource_stopped", "matched", "queuing", "queuing_bytes", "retried", "late_reply",
                  "failed", "inflight", "success", "received")


def _ban_json(ban: Ban) -> dict[str, Any]:
    return {"as": ban.kind, "who": ban.who, "by": ban.by, "reason": ban.reason, "at": _rfc3339(ban.at),
            "until": "infinity" if ban.until is None else _rfc3339(ban.until)}


def _rfc3339(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).astimezone().isoformat(timespec="seconds")


def _epoch_s(value: Any, name: str) -> int:
    """An ``at``/``until`` of the API: epoch seconds or an RFC 3339 time (emqx_utils_calendar:epoch_second)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            pass
    raise ValueError(f"{name}: expected an RFC 3339 time or epoch seconds, got {value!r}")


def _ban_from(body: Any) -> Ban:
    """emqx_banned:parse/1 for the kinds the stand-in keeps (clientid, username, peerhost)."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    kind, who = body.get("as"), body.get("who")
    if kind not in BAN_KINDS:
        raise ValueError(f"as: {kind!r} is not one of {', '.join(BAN_KINDS)} (the stand-in has no _re/_net bans)")
    if not isinstance(who, str) or not who:
        raise ValueError("who: required")
    now = int(time.time())
    at = _epoch_s(body["at"], "at") if "at" in body else now
    until_raw = body.get("until", "infinity")
    until = None if until_raw == "infinity" else _epoch_s(until_raw, "until")
    if until is not None and until < now:
        raise ValueError(f"Cannot create expired banned, {at} to {until}")
    return Ban(kind, who, str(body.get("by", "mgmt_api")), str(body.get("reason", "")), at, until)


def _rule_from(sql: str) -> list[str]:
    try:
        from .rules.sql import parse_rule_sql
        parsed = parse_rule_sql(sql)
        return list(parsed.events) + list(parsed.topic_filters)
    except Exception:  # noqa: BLE001 - informational only
        return []
