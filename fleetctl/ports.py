"""Free loopback ports for private stacks (tests, benchmarks).

Asking the kernel for port 0 returns one from the ephemeral range, which is also where every outgoing
connection's local port comes from: between choosing the port and the server binding it, a client socket (paho,
requests, asyncpg…) can take it, and the server fails with "address already in use". Ports below the ephemeral
range are never handed out that way, so they are chosen there, and checked by binding.

Parallel test workers (pytest-xdist, ``make test``) each get a disjoint slice of that range. A port that is free
when one worker checks it may be chosen by another worker before either server binds it, and two listeners with
``SO_REUSEPORT`` on one port do not fail: the kernel spreads the connections of one stack's clients over both
stacks. With disjoint slices two workers never choose the same port. Within a process the ports are handed out in
turn from a random start, so two calls never return the same port before the slice wraps around, and two test
runs on one machine (two worktrees) rarely start at the same place.

Every port of a stack is one field of ``fleetcore.embedded.Ports``: a new listener (a new field there) gets its
port from here through ``tests.conftest.free_ports`` with nothing else to change; a server of a single test takes
``free_port()``.
"""
from __future__ import annotations

import itertools
import os
import random
import socket
import threading
from collections.abc import Iterator

_FALLBACK_EPHEMERAL_LOW = 32768
_LOWEST = 20000        # below this are well-known services (and the embedded stack's default ports)
_MIN_SLICE = 200


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_LOW


def _worker() -> tuple[int, int]:
    """(index, count) of this pytest-xdist worker ("gw3" of 4 → (3, 4)); (0, 1) outside xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    try:
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        index = int(name[2:]) if name.startswith("gw") else 0
    except ValueError:
        return 0, 1
    return (index, count) if 0 <= index < count else (0, 1)


def port_range() -> range:
    """The ports this process chooses from: its worker's slice of [20000, start of the ephemeral range)."""
    high = _ephemeral_low()
    low = min(_LOWEST, high - 1000)
    index, count = _worker()
    size = (high - low) // count
    if size < _MIN_SLICE:           # very many workers: share the whole range rather than run out
        return range(low, high)
    return range(low + index * size, low + (index + 1) * size)


_lock = threading.Lock()
_turns: tuple[range, Iterator[int]] | None = None


def _next_candidate() -> int:
    global _turns   # one rotation per process, shared by its threads
    with _lock:
        ports = port_range()
        if _turns is None or _turns[0] != ports:
            start = random.randrange(len(ports))  # noqa: S311 - a port number, not a secret
            _turns = (ports, itertools.cycle([*ports[start:], *ports[:start]]))
        return next(_turns[1])


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that is free now, outside the range the kernel gives to outgoing connections and, under
    pytest-xdist, inside this worker's slice."""
    for _ in range(len(port_range())):
        port = _next_candidate()
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port on {host} in {port_range()}")
