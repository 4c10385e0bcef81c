"""``POST /mqtt/authz`` — EMQX's HTTP authorization callout, for every PUBLISH and SUBSCRIBE not in its cache.

Body (all strings): ``{clientid, username, topic, action, qos, retain, role}``, ``role`` being
``${client_attrs.role}`` from the authn answer, and ``vda`` (``${client_attrs.vda}``, empty for
our own protocol's vehicles: an unset attribute renders as ""). The decision is ``authsvc.acl.decide`` — pure
CPU, no database.
Answer ``200 {"result": "allow"|"deny"}``; a body that breaks the contract is denied. Denials are logged with
their reason (allows only at debug level: they are the hot path). Served by ``broker_request.BrokerCallouts``.
"""
from __future__ import annotations

import logging

from authsvc import acl, metrics
from authsvc.broker_request import ALLOW_BODY, DENY_BODY, MalformedRequest, string_fields_of
from fleetcore.logs import log_event

PATH = "/mqtt/authz"
log = logging.getLogger("authsvc.authz")


def authorize(data: bytes) -> bytes:
    """The answer body for one authz request body."""
    try:
        body = string_fields_of(data, ("clientid", "username", "topic", "action"), ("role", "qos", "retain", "vda"))
    except MalformedRequest as exc:
        log_event(log, "authz.deny", logging.WARNING, reason=f"malformed:{exc.reason}")
        metrics.decided("authz", False, f"malformed:{exc.reason}")
        return DENY_BODY
    decision = acl.decide(body.get("role", ""), body["clientid"], body["username"], body["action"], body["topic"],
                          retain=body.get("retain", "false") == "true", vda=body.get("vda", ""))
    metrics.decided("authz", decision.allow, decision.reason)
    if decision.allow:
        log_event(log, "authz.allow", logging.DEBUG, vehicle=body["clientid"], action=body["action"],
                  topic=body["topic"], reason=decision.reason)
        return ALLOW_BODY
    log_event(log, "authz.deny", logging.WARNING, vehicle=body["clientid"][:100], role=body.get("role", "")[:32],
              action=body["action"][:16], topic=body["topic"][:200], reason=decision.reason)
    return DENY_BODY
