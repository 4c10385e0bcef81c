"""HTTP authentication exactly as EMQX's password_based:http authenticator (docs/EMQX.md §3).

Chain semantics (emqx_authn_chains.erl): authenticators are tried in order; ``ignore`` moves to the next;
when every one ignored, the client is refused with ``not_authorized``; an empty chain allows everyone.
Per authenticator: 204 → allow; 200 + JSON/form body → ``result`` allow / deny / ignore (missing or unknown →
ignore), with ``is_superuser`` and ``client_attrs``; any other status, a failed request or a timeout → ignore.
"""
from __future__ import annotations

import base64
import logging
import time
from typing import Any

from fleetcore.logs import log_event

from .auth_http import HttpCallout
from .clientinfo import AuthnResult, ClientInfo
from .config import AuthnConfig

log = logging.getLogger("emqx.standin.authn")


def client_variables(client: ClientInfo) -> dict[str, Any]:
    """The placeholder values of a client (emqx_auth_template: client info renamed for templates)."""
    cert = client.peercert
    return {
        "clientid": client.clientid,
        "username": client.username,
        "password": client.password,
        "peerhost": client.peerhost,
        "peerport": client.peerport,
        "proto_name": client.proto_name,
        "mountpoint": "",
        "zone": "default",
        "listener": client.listener,
        # "" without a certificate: EMQX renders an unset variable as "" (emqx_auth_template render_var/2)
        "cert_subject": cert.subject if cert else "",
        "cert_common_name": cert.common_name if cert else "",
        "cert_pem": base64.b64encode(cert.der).decode("ascii") if cert else "",
        "client_attrs": client.client_attrs,
    }


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.lower() == "true"
    return False


def _client_attrs(body: dict[str, Any]) -> dict[str, str]:
    attrs = body.get("client_attrs")
    if not isinstance(attrs, dict):
        return {}
    return {str(k): str(v) for k, v in attrs.items() if isinstance(k, str) and k and isinstance(v, str)}


_PERMISSIONS = ("allow", "deny")
_ACTIONS = ("publish", "subscribe", "all")


def parse_acl(raw: Any) -> list[dict] | None:
    """The ``acl`` list of an authn answer as normalised rules, or None when malformed (EMQX then fails the
    login: emqx_authz_rule_raw). Each rule: permission, action, topics (list), qos (list or None), retain."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        return None
    rules = []
    for item in raw:
        if not isinstance(item, dict) or item.get("permission") not in _PERMISSIONS:
            return None
        action = item.get("action", "all")
        topics = item.get("topics", [item["topic"]] if "topic" in item else None)
        if action not in _ACTIONS or not isinstance(topics, list) or not topics \
                or not all(isinstance(t, str) and t for t in topics):
            return None
        qos = item.get("qos")
        if qos is not None and (not isinstance(qos, list) or not all(q in (0, 1, 2) for q in qos)):
            return None
        retain = item.get("retain", "all")
        if retain not in (True, False, "all", "true", "false"):
            return None
        rules.append({"permission": item["permission"], "action": action, "topics": topics, "qos": qos,
                      "retain": retain if retain == "all" else _to_bool(retain)})
    return rules


class _HttpAuthenticator:
    def __init__(self, config: AuthnConfig, index: int) -> None:
        self.config = config
        self.callout = HttpCallout(config.http, f"authentication.{index}")

    async def authenticate(self, client: ClientInfo) -> AuthnResult | None:
        """An AuthnResult, or None for ignore."""
        status, body = await self.callout.call(client_variables(client))
        if status == 204:
            return AuthnResult(True, "success")
        if status != 200 or body is None:
            if status not in (0, 200):
                log_event(log, "authn.http_ignored", level=logging.DEBUG, clientid=client.clientid, status=status)
            return None
        result = body.get("result", "ignore")
        if result == "deny":
            return AuthnResult(False, "not_authorized")
        if result != "allow":
            return None
        expire_at = body.get("expire_at")
        if expire_at is not None:
            now = int(time.time())
            if not isinstance(expire_at, int) or expire_at < now or expire_at > now * 500:
                return AuthnResult(False, "bad_username_or_password")
        acl = parse_acl(body.get("acl"))
        if acl is None:
            log_event(log, "authn.malformed_acl", level=logging.WARNING, clientid=client.clientid)
            return AuthnResult(False, "bad_username_or_password")
        return AuthnResult(True, "success", _client_attrs(body), _to_bool(body.get("is_superuser", False)),
                           expire_at, acl)


class Authenticator:
    """The authentication chain of ``authentication = [...]``."""

    def __init__(self, configs: list[AuthnConfig]) -> None:
        self.chain = [_HttpAuthenticator(c, i) for i, c in enumerate(configs, start=1) if c.enable]
        self.metrics = {"total": 0, "success": 0, "failed": 0, "nomatch": 0}

    async def start(self) -> None:
        for authenticator in self.chain:
            await authenticator.callout.start()

    async def stop(self) -> None:
        for authenticator in self.chain:
            await authenticator.callout.stop()

    async def authenticate(self, client: ClientInfo) -> AuthnResult:
        self.metrics["total"] += 1
        if not self.chain:
            self.metrics["success"] += 1
            return AuthnResult(True, "success")          # EMQX: no authenticator → anonymous access
        for authenticator in self.chain:
            result = await authenticator.authenticate(client)
            if result is None:
                self.metrics["nomatch"] += 1
                continue
            self.metrics["success" if result.allow else "failed"] += 1
            log_event(log, "authn.result", level=logging.DEBUG, clientid=client.clientid,
                      result="allow" if result.allow else "deny")
            return result
        self.metrics["failed"] += 1
        log_event(log, "authn.not_authorized", clientid=client.clientid, reason="all_authenticators_ignored")
        return AuthnResult(False, "not_authorized")
