"""Rule-engine columns of the client events, with EMQX's field names (emqx_rule_events.erl, docs/EMQX.md §5.5).

The broker calls ``RuleEngine.client_connected/client_disconnected/authz_complete`` (engine.py), which use these.
"""
from __future__ import annotations

import time
from typing import Any

from ..clientinfo import ClientInfo

CONNECTED = "$events/client_connected"
DISCONNECTED = "$events/client_disconnected"
AUTHZ_COMPLETE = "$events/client_check_authz_complete"


def _now_ms() -> int:
    return int(time.time() * 1000)


def connected_fields(client: ClientInfo, *, sockname: str = "", expiry_interval: int = 0) -> dict[str, Any]:
    return {
        "clientid": client.clientid,
        "username": client.username,
        "mountpoint": None,
        "peername": f"{client.peerhost}:{client.peerport}",
        "sockname": sockname,
        "proto_name": client.proto_name,
        "proto_ver": client.proto_ver,
        "keepalive": client.keepalive,
        "clean_start": client.clean_start,
        "expiry_interval": expiry_interval,
        "is_bridge": False,
        "conn_props": {},
        "receive_maximum": 32,
        "connected_at": client.connected_at,
        "client_attrs": dict(client.client_attrs),
    }


def disconnected_fields(client: ClientInfo, reason: str, *, disconnected_at: int | None = None,
                        sockname: str = "") -> dict[str, Any]:
    return {
        "reason": reason,
        "clientid": client.clientid,
        "username": client.username,
        "peername": f"{client.peerhost}:{client.peerport}",
        "sockname": sockname,
        "proto_name": client.proto_name,
        "proto_ver": client.proto_ver,
        "disconn_props": {},
        "disconnected_at": disconnected_at if disconnected_at is not None else _now_ms(),
        "connected_at": client.connected_at,
        "client_attrs": dict(client.client_attrs),
    }


def authz_complete_fields(client: ClientInfo, action: str, topic: str, result: str, source: str) -> dict[str, Any]:
    return {
        "clientid": client.clientid,
        "username": client.username,
        "peerhost": client.peerhost,
        "topic": topic,
        "action": action,
        "authz_source": source,
        "result": result,
        "client_attrs": dict(client.client_attrs),
    }
