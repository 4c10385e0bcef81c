"""One JSON error shape for every failure: ``{"code", "message", "details"}`` with the right status.

Covers our own ``ApiError``s, every HTTP exception Flask or Werkzeug raises (404, 405, 413, 415, malformed JSON),
webargs validation errors (422 with per-field details) and unexpected exceptions (500 with a request id — the
stack trace goes to the log, never to the client).
"""
from __future__ import annotations

import logging
import uuid

from flask import Flask, g, jsonify, request
from marshmallow import Schema, fields
from werkzeug.exceptions import HTTPException

from fleetcore.logs import log_event

log = logging.getLogger("api.errors")

CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error",
    429: "rate_limited", 500: "internal_error", 502: "bad_gateway", 503: "unavailable",
}


class ErrorSchema(Schema):
    """The body of every error response."""
    code = fields.String(required=True, metadata={"description": "machine-readable error code",
                                                  "example": "validation_error"})
    message = fields.String(required=True, metadata={"description": "what went wrong, for people"})
    details = fields.Dict(metadata={"description": "extra information, e.g. errors per field"})


class ApiError(Exception):
    """Raise to answer with a JSON error: ``raise ApiError(409, "vehicle already exists", code="conflict")``."""

    def __init__(self, status: int, message: str, *, code: str | None = None, details: dict | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def error_response(status: int, message: str, code: str | None = None, details: dict | None = None,
                   headers: dict | None = None):
    body = {"code": code or CODES.get(status, "error"), "message": message, "details": details or {}}
    response = jsonify(body)
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _handle_api_error(error: ApiError):
    return error_response(error.status, error.message, error.code, error.details, error.headers)


def _handle_http_exception(error: HTTPException):
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    headers = dict(data.get("headers") or {})
    field_errors = data.get("errors") or data.get("messages")
    if field_errors == {"json": ["Invalid JSON body."]} or (status == 400 and "JSON" in (error.description or "")):
        return error_response(400, "the request body is not valid JSON", headers=headers)
    if field_errors:
        return error_response(422, data.get("message") or "the request has invalid fields",
                              details={"fields": field_errors}, headers=headers)
    valid_methods = getattr(error, "valid_methods", None)
    if status == 405 and valid_methods:
        headers["Allow"] = ", ".join(sorted(valid_methods))
    message = data.get("message") or error.description or error.name
    return error_response(status, message, headers=headers)


def _handle_unexpected(error: Exception):
    if isinstance(error, HTTPException):
        return _handle_http_exception(error)
    request_id = getattr(g, "request_id", None) or uuid.uuid4().hex[:12]
    log.error("unhandled error", exc_info=error, extra={"event": "api.unhandled_error", "request_id": request_id,
                                                         "path": request.path, "method": request.method})
    return error_response(500, f"unexpected server error (request id {request_id}); it was logged",
                          details={"request_id": request_id})


def require_json_body() -> None:
    """415 for a body that is not JSON on methods that take one (an empty body is left to validation)."""
    if request.method in ("POST", "PUT", "PATCH") and request.content_length and not request.is_json:
        raise ApiError(415, "send the body as JSON with Content-Type: application/json")


def register(app: Flask) -> None:
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)


def log_denied(reason: str, **fields) -> None:
    log_event(log, "api.denied", logging.WARNING, reason=reason, path=request.path, **fields)
