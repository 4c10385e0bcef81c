"""Give memory back to the system after a wave of connections has gone (glibc only; elsewhere a no-op).

Every TLS connection holds a 256 KiB read buffer (asyncio's SSLProtocol) from accept to close, plus OpenSSL's own
state. glibc serves the first large buffers with mmap and unmaps them on free — but each such free raises its mmap
threshold, so later buffers come from the heap, where freed memory stays with the process: 3,000 idle TLS
connections left about 750 MB behind after they had closed. Two remedies, both glibc's documented interfaces:

- ``mallopt(M_MMAP_THRESHOLD, 128 KiB)`` at start: a fixed threshold turns the adjustment off, so large buffers
  always get their own mapping and are returned the moment they are freed;
- after ``TRIM_AFTER_CLOSED`` sockets have closed (checked every second), a full garbage collection — a TLS
  connection that died in its handshake is a reference cycle in asyncio, freed only by one — and
  ``malloc_trim(0)``, which returns the free pages inside the heap (OpenSSL's per-connection state) too.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
from typing import Any

from fleetcore.logs import log_event

log = logging.getLogger("emqx.standin.memory")

M_MMAP_THRESHOLD = -3                 # glibc malloc.h
MMAP_THRESHOLD = 128 * 1024
TRIM_AFTER_CLOSED = 200               # descriptors closed since the high-water mark
CHECK_INTERVAL_S = 1.0


def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def keep_large_buffers_on_mmap() -> bool:
    """Call once at start, before the connections come."""
    return _LIBC is not None and bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def open_descriptors() -> int | None:
    """The process's open file descriptors (Linux: /proc/self/fd): every socket, whatever layer it died in."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


async def trim_after_waves() -> None:
    """Runs for the broker's lifetime: once ``TRIM_AFTER_CLOSED`` descriptors have closed since the high-water mark,
    collect reference cycles (asyncio's TLS protocol and transport refer to each other, so a connection that died
    in its handshake waits for a full collection) and return the freed heap pages."""
    if _LIBC is None or open_descriptors() is None:
        return
    high_water = open_descriptors() or 0
    while True:
        await asyncio.sleep(CHECK_INTERVAL_S)
        count = open_descriptors() or 0
        if count > high_water:
            high_water = count
        elif high_water - count >= TRIM_AFTER_CLOSED:
            collected = gc.collect()
            released = _LIBC.malloc_trim(0)
            log_event(log, "memory.trimmed", descriptors_before=high_water, descriptors_now=count,
                      objects_collected=collected, released=bool(released))
            high_water = count
