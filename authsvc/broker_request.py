"""Requests from the broker: the shared-secret check and the EMQX body contract (a JSON object of strings).

Only the broker may call the ``/mqtt/*`` endpoints. It sends the shared secret ``FLEET_BROKER_TOKEN`` in the
``x-fleet-broker-token`` header; a call without it, or with a wrong one, gets ``401`` and is logged with the
caller's address (never the header value). The comparison is constant-time.

authn and authz are served by ``BrokerCallouts`` (plain WSGI, in front of Flask); registration is a Flask
blueprint using the wrappers at the end. Both apply the same rules (``token_ok``, ``read_limited``).
"""
from __future__ import annotations

import hmac
import json
import logging
import time

from flask import current_app, request

from authsvc import metrics
from fleetcore.errors import HttpError, unexpected, wsgi_response
from fleetcore.logs import log_event

HEADER = "x-fleet-broker-token"
UNAUTHORIZED_MESSAGE = f"this endpoint is for the broker only: send the {HEADER} header"
log = logging.getLogger("authsvc.broker")


class MalformedRequest(Exception):
    """The body breaks the EMQX contract; ``reason`` says how (logged)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- framework-free rules -------------------------------------------------------------------------------------
def token_ok(given: str | None, expected: bytes, path: str, peer: str | None) -> bool:
    """Is ``given`` the broker's shared secret? A refusal is logged (without the value)."""
    if given is not None and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
        return True
    log_event(log, "authsvc.broker_token_rejected", logging.WARNING, path=path, peer=peer,
              reason="missing" if given is None else "wrong")
    return False


def read_limited(stream, content_length: int | None, limit: int) -> bytes:
    """At most ``limit`` bytes of a body; longer → MalformedRequest('oversized') without reading it all."""
    if content_length is not None and content_length > limit:
        raise MalformedRequest("oversized")
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise MalformedRequest("oversized")
    return data


def json_object(data: bytes) -> dict:
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise MalformedRequest("malformed_json") from None
    if not isinstance(body, dict):
        raise MalformedRequest("not_an_object")
    return body


def string_fields_of(data: bytes, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, str]:
    """The contract fields of an authn/authz body: every one a string, the required ones present.

    Fields beyond the contract are ignored (a broker configuration may send more, e.g. ``peerhost``).
    """
    body = json_object(data)
    fields: dict[str, str] = {}
    for name in required + optional:
        value = body.get(name)
        if value is None:
            if name in required:
                raise MalformedRequest(f"missing_{name}")
            continue
        if not isinstance(value, str):
            raise MalformedRequest(f"non_string_{name}")
        fields[name] = value
    return fields


DENY_BODY = b'{"result":"deny"}'
ALLOW_BODY = b'{"result":"allow"}'


# -- the broker callouts as plain WSGI ------------------------------------------------------------------------
class CalloutUnavailable(Exception):
    """A callout cannot decide (database down): answer 503, which EMQX treats as "ignore" → not authorized."""


def _decision(start_response, body: bytes) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class BrokerCallouts:
    """WSGI middleware in front of Flask for the two callouts on the broker's hot path (every CONNECT, every
    uncached PUBLISH/SUBSCRIBE): ``{path: decide(body bytes) -> answer bytes}``. Same shared-secret check, body
    limit and JSON error shape as the blueprints, at about half the CPU per request of a Flask route
    (measured: authz 295 → 174 µs through gunicorn). Every other path goes to the Flask app."""

    def __init__(self, app, routes: dict, broker_token: bytes, max_body_bytes: int) -> None:
        self.app = app
        self.routes = routes
        self.broker_token = broker_token
        self.max_body_bytes = max_body_bytes

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO")
        decide = self.routes.get(path)
        if decide is None:
            return self.app(environ, start_response)
        started = time.perf_counter()
        try:
            return self._callout(environ, start_response, path, decide)
        finally:
            metrics.CALLOUT_SECONDS.labels(path.rsplit("/", 1)[-1]).observe(time.perf_counter() - started)

    def _callout(self, environ, start_response, path: str, decide):
        if environ.get("REQUEST_METHOD") != "POST":
            return wsgi_response(start_response, HttpError(405, "The method is not allowed for the requested URL.",
                                                           headers={"Allow": "POST"}))
        if not token_ok(environ.get("HTTP_X_FLEET_BROKER_TOKEN"), self.broker_token, path,
                        environ.get("REMOTE_ADDR")):
            return wsgi_response(start_response, HttpError(401, UNAUTHORIZED_MESSAGE))
        try:
            length = int(environ["CONTENT_LENGTH"]) if environ.get("CONTENT_LENGTH") else None
            data = read_limited(environ["wsgi.input"], length, self.max_body_bytes)
        except (MalformedRequest, ValueError) as exc:
            reason = f"malformed:{getattr(exc, 'reason', 'bad_content_length')}"
            log_event(log, "callout.deny", logging.WARNING, path=path, reason=reason)
            metrics.decided(path.rsplit("/", 1)[-1], False, reason)
            return _decision(start_response, DENY_BODY)
        try:
            return _decision(start_response, decide(data))
        except CalloutUnavailable as exc:
            metrics.unavailable(path.rsplit("/", 1)[-1], "database")
            return wsgi_response(start_response, HttpError(503, str(exc)))
        except Exception:  # noqa: BLE001 - a bug must still answer JSON (EMQX: "ignore" → not authorized)
            return wsgi_response(start_response, unexpected("authsvc", path=path))


# -- Flask wrappers -------------------------------------------------------------------------------------------
def require_broker_token() -> None:
    """``before_request`` of every broker-facing blueprint."""
    if not token_ok(request.headers.get(HEADER), current_app.extensions["authsvc.broker_token"], request.path,
                    request.remote_addr):
        raise HttpError(401, UNAUTHORIZED_MESSAGE)


def read_body(limit: int) -> bytes:
    return read_limited(request.stream, request.content_length, limit)


