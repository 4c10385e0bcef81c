"""Reconnect delays: exponential growth with jitter, so a thousand vehicles that lost the broker at the same
moment do not all come back in the same second."""
from __future__ import annotations

import random


class Backoff:
    """``base · 2^attempt`` capped at ``cap``, with "equal jitter": half fixed, half random.

    The fixed half keeps a vehicle from hammering a broker that is down; the random half spreads a reconnect
    storm over time.
    """

    def __init__(self, base_s: float = 1.0, cap_s: float = 60.0, rng: random.Random | None = None) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("need 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one failed attempt."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        """Call once a connection has succeeded."""
        self.attempt = 0
