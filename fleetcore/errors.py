"""One JSON error shape for every HTTP service: ``{"code", "message", "details"}`` with the right status.

The api and authsvc answer every failure this way: our own ``HttpError``s, every HTTP exception Flask or
Werkzeug raises (404, 405, 413, 415, malformed JSON), webargs validation errors (422 with per-field details),
values the database refuses as data (422) and unexpected exceptions (500 with a request id — the stack trace
goes to the log, never to the client).
``register(app, component)`` installs the handlers on a Flask app; ``wsgi_response`` writes the same body from
plain WSGI code (authsvc's broker callouts, authsvc/broker_request.py).
"""
from __future__ import annotations

import json
import logging
import uuid
from http import HTTPStatus

import psycopg2
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from fleetcore.logs import log_event

CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    408: "request_timeout", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
    422: "validation_error", 429: "rate_limited", 500: "internal_error", 502: "bad_gateway", 503: "unavailable",
}


def code_for(status: int) -> str:
    """The default machine-readable code of a status."""
    return CODES.get(status, "error")


class HttpError(Exception):
    """Raise to answer with a JSON error: ``raise HttpError(409, "vehicle already exists", code="conflict")``."""

    def __init__(self, status: int, message: str, *, code: str | None = None, details: dict | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or code_for(status)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def body(self) -> dict:
        return {"code": self.code, "message": self.message, "details": self.details}


def unexpected(component: str, **fields) -> HttpError:
    """Log the exception being handled (with its stack trace) and return the 500 the client gets: a request id
    to quote, nothing else."""
    request_id = fields.pop("request_id", None) or uuid.uuid4().hex[:12]
    # called from except blocks only: .exception() records the stack trace being handled
    logging.getLogger(f"{component}.errors").exception(  # noqa: LOG004
        "unhandled error", extra={"event": f"{component}.unhandled_error", "request_id": request_id, **fields})
    return HttpError(500, f"unexpected server error (request id {request_id}); it was logged",
                     details={"request_id": request_id})


def log_unavailable(component: str, what: str, exc: Exception, **fields) -> None:
    """A backend (database, broker) failed: log which one and the exception class — never its message, which may
    carry connection strings."""
    log_event(logging.getLogger(f"{component}.errors"), f"{component}.backend_unavailable", logging.ERROR,
              what=what, error=exc.__class__.__name__, **fields)


# -- plain WSGI ------------------------------------------------------------------------------------------------
def wsgi_response(start_response, error: HttpError) -> list[bytes]:
    """Answer ``error`` from WSGI code that runs outside Flask."""
    body = json.dumps(error.body()).encode()
    start_response(f"{error.status} {HTTPStatus(error.status).phrase}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                    *error.headers.items()])
    return [body]


# -- Flask -----------------------------------------------------------------------------------------------------
def response(error: HttpError) -> Response:
    answer = jsonify(error.body())
    answer.status_code = error.status
    for key, value in error.headers.items():
        answer.headers[key] = value
    return answer


def from_http_exception(exc: HTTPException) -> HttpError:
    """Werkzeug's and webargs' exceptions in our shape: malformed JSON is a 400 that says so, field errors a 422
    with the errors per field, a 405 keeps its ``Allow`` header."""
    status = exc.code or 500
    data = getattr(exc, "data", None) or {}
    headers = dict(data.get("headers") or {})
    field_errors = data.get("errors") or data.get("messages")
    if field_errors == {"json": ["Invalid JSON body."]} or (status == 400 and "JSON" in (exc.description or "")):
        return HttpError(400, "the request body is not valid JSON", headers=headers)
    if field_errors:
        return HttpError(422, data.get("message") or "the request has invalid fields",
                         details={"fields": field_errors}, headers=headers)
    valid_methods = getattr(exc, "valid_methods", None)
    if status == 405 and valid_methods:
        headers["Allow"] = ", ".join(sorted(valid_methods))
    return HttpError(status, data.get("message") or exc.description or exc.name, headers=headers)


def from_data_error(component: str, exc: psycopg2.DataError) -> HttpError:
    """A value the database refused as data (out of range, malformed, untranslatable): the request's fault, so
    422 rather than 500. Validation should have caught it first; the log names the database's error class, never
    its message (which may quote the value)."""
    log_event(logging.getLogger(f"{component}.errors"), f"{component}.data_error", logging.WARNING,
              error=exc.__class__.__name__, pgcode=exc.pgcode, path=request.path, request_id=g.get("request_id"))
    return HttpError(422, "a value in the request is out of range or malformed for storage",
                     details={"database_error": exc.__class__.__name__})


def register(app: Flask, component: str) -> None:
    """Answer every error of ``app`` as JSON. Register after flask-smorest, so these handlers win."""
    def handle_unexpected(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return response(from_http_exception(exc))
        if isinstance(exc, psycopg2.DataError):
            return response(from_data_error(component, exc))
        return response(unexpected(component, request_id=g.get("request_id"), path=request.path,
                                   method=request.method))

    app.register_error_handler(HttpError, response)
    app.register_error_handler(HTTPException, lambda exc: response(from_http_exception(exc)))
    app.register_error_handler(Exception, handle_unexpected)
