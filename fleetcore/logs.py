"""Structured logs: one event per line, ``key=value`` (logfmt) by default or JSON.

Use ``log_event(logger, "authn.deny", vehicle="veh-1", reason="bad_secret")``. Never pass secrets: the
formatter has no way to know what is secret, so the rule is enforced by not logging them at the call site.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _logfmt_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c in text for c in ' ="\\\n\t'):
        return json.dumps(text)
    return text


class StructuredFormatter(logging.Formatter):
    def __init__(self, component: str, as_json: bool = False) -> None:
        super().__init__()
        self.component = component
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
        }
        event = getattr(record, "event", None)
        if event:
            fields["event"] = event
        message = record.getMessage()
        if message and message != event:
            fields["msg"] = message
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key != "event" and not key.startswith("_"):
                fields[key] = value
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info)
        if self.as_json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())


def configure(component: str, level: str | None = None, fmt: str | None = None) -> None:
    """Send all logging of this process to stderr, structured. Safe to call more than once."""
    level = (level or os.environ.get("FLEET_LOG_LEVEL") or "INFO").upper()
    fmt = (fmt or os.environ.get("FLEET_LOG_FORMAT") or "logfmt").lower()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(component, as_json=(fmt == "json")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one named event with fields (``vehicle=``, ``mission=``, ``reason=``…)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"event": event, **fields})
