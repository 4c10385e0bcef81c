"""The offline telemetry buffer: telemetry made while disconnected is kept (bounded) and uploaded on reconnect
as ``{"v":1,"batch":[envelope, …]}`` messages of bounded size (docs/PROTOCOL.md, Telemetry)."""
from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from typing import Any

from fleetcore import envelope


class OfflineBuffer:
    """Oldest-first bounded buffer; when full the oldest message is dropped and counted."""

    def __init__(self, capacity: int = 3600) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._items: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, message: dict[str, Any]) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(message)

    def drain_batches(self, max_items: int = 100, max_bytes: int = 64_000) -> Iterator[bytes]:
        """Encoded batch payloads, oldest first, each with at most ``max_items`` messages and ``max_bytes`` bytes.

        Messages are removed as they are yielded; a single message larger than ``max_bytes`` goes alone.
        """
        while self._items:
            batch: list[dict[str, Any]] = []
            size = len(b'{"v":1,"batch":[]}')
            while self._items and len(batch) < max_items:
                item_size = len(json.dumps(self._items[0], separators=(",", ":"))) + 1
                if batch and size + item_size > max_bytes:
                    break
                batch.append(self._items.popleft())
                size += item_size
            yield envelope.encode(envelope.batch(batch))
