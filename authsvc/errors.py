"""One JSON error shape for authsvc, ``{"code", "message", "details"}``, for every failure.

Deny decisions are *not* errors: authn/authz answer ``200 {"result": "deny"}`` (EMQX reads any non-2xx as
"ignore"). Errors are for callers that are not the broker (401), malformed registration calls (4xx) and
infrastructure failures (5xx — the broker retries a registration, and treats a failed authn as "not authorized").
"""
from __future__ import annotations

import logging
import uuid

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from fleetcore.logs import log_event

log = logging.getLogger("authsvc.errors")

CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
         413: "payload_too_large", 415: "unsupported_media_type", 500: "internal_error", 502: "bad_gateway",
         503: "unavailable"}


class AuthsvcError(Exception):
    """Raise to answer with a JSON error."""

    def __init__(self, status: int, message: str, *, code: str | None = None, details: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.details = details or {}


def error_response(status: int, message: str, code: str | None = None, details: dict | None = None):
    response = jsonify({"code": code or CODES.get(status, "error"), "message": message, "details": details or {}})
    response.status_code = status
    return response


def _handle_authsvc_error(error: AuthsvcError):
    return error_response(error.status, error.message, error.code, error.details)


def _handle_http_exception(error: HTTPException):
    return error_response(error.code or 500, error.description or error.name)


def _handle_unexpected(error: Exception):
    if isinstance(error, HTTPException):
        return _handle_http_exception(error)
    request_id = uuid.uuid4().hex[:12]
    log.error("unhandled error", exc_info=error, extra={"event": "authsvc.unhandled_error",
                                                         "request_id": request_id, "path": request.path})
    return error_response(500, f"unexpected server error (request id {request_id}); it was logged",
                          details={"request_id": request_id})


def register(app: Flask) -> None:
    app.register_error_handler(AuthsvcError, _handle_authsvc_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)


def log_unavailable(what: str, exc: Exception, **fields) -> None:
    log_event(log, "authsvc.backend_unavailable", logging.ERROR, what=what, error=exc.__class__.__name__,
              **fields)
