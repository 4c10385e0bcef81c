"""Free loopback ports for private stacks (tests, benchmarks).

Asking the kernel for port 0 returns one from the ephemeral range, which is also where every outgoing
connection's local port comes from: between choosing the port and the server binding it, a client socket (paho,
requests, asyncpg…) can take it, and the server fails with "address already in use". Ports below the ephemeral
range are never handed out that way, so they are chosen there, at random, and checked by binding.
"""
from __future__ import annotations

import random
import socket

_FALLBACK_EPHEMERAL_LOW = 32768


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_LOW


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that is free now and outside the range the kernel gives to outgoing connections."""
    high = _ephemeral_low() - 1
    low = min(20000, high - 1000)
    for _ in range(200):
        port = random.randint(low, high)  # noqa: S311 - a port number, not a secret
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:        # a crowded machine: let the kernel choose
        sock.bind((host, 0))
        return sock.getsockname()[1]
