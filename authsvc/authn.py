"""``POST /mqtt/authn`` — EMQX's HTTP authentication callout, at every MQTT CONNECT.

Body (all strings): ``{clientid, username, password, peerhost}``. Answer, always ``200`` for a decision:
``{"result": "allow", "is_superuser": false, "client_attrs": {"role": "vehicle"|"enrolling", "fleet": …},
"acl": [the client's own topics, see acl.session_rules]}`` or
``{"result": "deny"}``. A body that breaks the contract is denied too. Only a database outage answers ``503``
(EMQX then "ignores" this authenticator and, being the only one, refuses the client: fail-closed).
Every decision is logged with its reason — never with the password. Served by ``broker_request.BrokerCallouts``.
"""
from __future__ import annotations

import json
import logging

import psycopg2

from authsvc import acl, metrics
from authsvc.broker_request import DENY_BODY, CalloutUnavailable, MalformedRequest, string_fields_of
from fleetcore import registry
from fleetcore.db import Database
from fleetcore.errors import log_unavailable
from fleetcore.logs import log_event

PATH = "/mqtt/authn"
log = logging.getLogger("authsvc.authn")


class Authenticator:
    """Decides one CONNECT: an active vehicle with its device secret, or an enrolling one with its token."""

    def __init__(self, database: Database, device_secret_key: str) -> None:
        self.database = database
        self.key = device_secret_key

    def __call__(self, data: bytes) -> bytes:
        try:
            body = string_fields_of(data, ("clientid", "username", "password"), ("peerhost",))
        except MalformedRequest as exc:
            log_event(log, "authn.deny", logging.WARNING, reason=f"malformed:{exc.reason}")
            metrics.decided("authn", False, f"malformed:{exc.reason}")
            return DENY_BODY
        clientid, peer = body["clientid"][:100], body.get("peerhost", "")[:64]
        try:
            with self.database.transaction() as cur:
                decision = registry.verify_credentials(cur, self.key, body["clientid"], body["username"],
                                                       body["password"])
        except psycopg2.Error as exc:
            log_unavailable("authsvc", "database", exc, vehicle=clientid)
            raise CalloutUnavailable("the credential store is unavailable") from None
        metrics.decided("authn", decision.allow, decision.reason)
        if not decision.allow or decision.role is None:
            log_event(log, "authn.deny", logging.WARNING, vehicle=clientid, username=body["username"][:100],
                      reason=decision.reason, peer=peer)
            return DENY_BODY
        log_event(log, "authn.allow", vehicle=clientid, role=decision.role, fleet=decision.fleet_id, peer=peer)
        attrs = {"role": decision.role, "fleet": decision.fleet_id}
        if decision.vda:
            attrs["vda"] = decision.vda   # its VDA 5050 topics (authsvc/acl.py); set only when there is one
        return json.dumps({"result": "allow", "is_superuser": False, "client_attrs": attrs,
                           "acl": acl.session_rules(decision.role, body["username"], decision.vda or "")},
                          separators=(",", ":")).encode()
