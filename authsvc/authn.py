"""``POST /mqtt/authn`` — EMQX's HTTP authentication callout, at every MQTT CONNECT.

Body (all strings): ``{clientid, username, password, peerhost, cert_common_name, cert_pem}``. The two ``cert_``
fields are what the broker's TLS listener verified: the client certificate's CN and the certificate itself (EMQX
renders ``${cert_pem}`` as the base64 of its DER encoding, docs/EMQX.md §3.1); both are ``""`` without a client
certificate. With a certificate the vehicle id is its CN and no password is needed (``registry.verify_certificate``:
CN = clientid = username, the vehicle's active certificate, vehicle active); without one, the password decides
(``registry.verify_credentials``). Only the mTLS listener asks for certificates (``verify_peer``), and it refuses a
client without one or with one the fleet CA did not sign before any CONNECT. Answer, always ``200`` for a decision:
``{"result": "allow", "is_superuser": false, "client_attrs": {"role": "vehicle"|"enrolling", "fleet": …},
"acl": [the client's own topics, see acl.session_rules]}`` or
``{"result": "deny"}``. A body that breaks the contract is denied too. Only a database outage answers ``503``
(EMQX then "ignores" this authenticator and, being the only one, refuses the client: fail-closed).
Every decision is logged with its reason — never with the password. Served by ``broker_request.BrokerCallouts``.
"""
from __future__ import annotations

import base64
import binascii
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
            body = string_fields_of(data, ("clientid", "username", "password"),
                                    ("peerhost", "cert_common_name", "cert_pem"))
        except MalformedRequest as exc:
            log_event(log, "authn.deny", logging.WARNING, reason=f"malformed:{exc.reason}")
            metrics.decided("authn", False, f"malformed:{exc.reason}")
            return DENY_BODY
        clientid, peer = body["clientid"][:100], body.get("peerhost", "")[:64]
        common_name = body.get("cert_common_name", "")
        certificate = b""
        if common_name:
            try:
                certificate = base64.b64decode(body.get("cert_pem", ""), validate=True)
            except (binascii.Error, ValueError):
                certificate = b""                     # verify_certificate refuses it: certificate_missing
        try:
            with self.database.transaction() as cur:
                if common_name:
                    decision = registry.verify_certificate(cur, body["clientid"], body["username"], common_name,
                                                           certificate)
                else:
                    decision = registry.verify_credentials(cur, self.key, body["clientid"], body["username"],
                                                           body["password"])
        except psycopg2.Error as exc:
            log_unavailable("authsvc", "database", exc, vehicle=clientid)
            raise CalloutUnavailable("the credential store is unavailable") from None
        metrics.decided("authn", decision.allow, decision.reason)
        if not decision.allow or decision.role is None:
            log_event(log, "authn.deny", logging.WARNING, vehicle=clientid, username=body["username"][:100],
                      reason=decision.reason, peer=peer, certificate_cn=common_name[:100] or None)
            return DENY_BODY
        log_event(log, "authn.allow", vehicle=clientid, role=decision.role, fleet=decision.fleet_id, peer=peer,
                  identity=decision.reason)
        attrs = {"role": decision.role, "fleet": decision.fleet_id}
        if decision.vda:
            attrs["vda"] = decision.vda   # its VDA 5050 topics (authsvc/acl.py); set only when there is one
        return json.dumps({"result": "allow", "is_superuser": False, "client_attrs": attrs,
                           "acl": acl.session_rules(decision.role, body["username"], decision.vda or "")},
                          separators=(",", ":")).encode()
