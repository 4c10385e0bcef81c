"""The JSON envelope of every MQTT message — docs/PROTOCOL.md (Envelope).

Vehicle → backend: ``{"v": 1, "msg_id": …, "seq": …, "ts": <epoch ms>, "data": {…}}`` (or a ``batch`` of those).
Backend → vehicle: ``{"v": 1, "msg_id": …, "ts": …, "type": "mission.dispatch", "data": {…}}``.
Validation of inbound messages lives in SQL (sql/), so EMQX and the stand-in behave identically; this module
only builds envelopes.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

VERSION = 1

COMMAND_TYPES = ("mission.dispatch", "mission.cancel", "mission.pause", "mission.resume", "emergency.stop",
                 "emergency.release", "config.update")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def command(command_type: str, data: dict[str, Any], msg_id: str | None = None) -> dict[str, Any]:
    """A backend → vehicle command; a vehicle treats a repeated ``msg_id`` as already handled."""
    if command_type not in COMMAND_TYPES:
        raise ValueError(f"unknown command type {command_type!r}")
    return {"v": VERSION, "msg_id": msg_id or str(uuid.uuid4()), "ts": now_ms(), "type": command_type, "data": data}


def reply(reply_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """A backend → vehicle answer that is not a command (register.accepted / register.rejected)."""
    return {"v": VERSION, "msg_id": str(uuid.uuid4()), "ts": now_ms(), "type": reply_type, "data": data}


def message(data: dict[str, Any], seq: int, msg_id: str | None = None, ts: int | None = None) -> dict[str, Any]:
    """A vehicle → backend message."""
    return {"v": VERSION, "msg_id": msg_id or str(uuid.uuid4()), "seq": seq, "ts": now_ms() if ts is None else ts,
            "data": data}


def batch(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Several vehicle → backend messages in one publish (the offline buffer upload): ``{"v":1,"batch":[…]}``."""
    return {"v": VERSION, "batch": list(messages)}


def encode(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")
