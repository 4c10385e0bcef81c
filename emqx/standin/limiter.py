"""EMQX 5.10's rate limiter: per-client message and byte quotas, and the listener's connection rate.

How EMQX 5.10.4 does it (apps/emqx/src/emqx_limiter/, docs/EMQX.md §12):

- A listener's ``messages_rate`` / ``bytes_rate`` (+ ``*_burst``) create an *exclusive* limiter group: every
  client of the listener gets its own bucket (emqx_limiter:create_listener_limiters/2 → ``channel_group``).
  ``max_conn_rate`` (+ ``max_conn_burst``) is one bucket *shared* by the listener (``listener_group``).
- The bucket (emqx_limiter_exclusive.erl, try_consume/3): it starts with ``capacity + burst_capacity`` tokens,
  where ``burst_capacity`` is ``burst + capacity`` when a burst is configured and 0 otherwise
  (emqx_limiter:config/2). When the tokens do not cover a request, it refills — at most once per ``interval``,
  by ``capacity × elapsed / interval``, capped at ``capacity`` — and failing that, at most once per
  ``burst_interval``, jumps to ``capacity + burst_capacity``.
- A PUBLISH is checked for ``bytes`` (its payload size) and then ``messages`` (1) before anything else
  (emqx_channel:check_quota_exceeded/2); if one fails, what the other took is put back
  (emqx_limiter_client_container:try_consume/2).
- Over quota the message is **dropped**, not delayed: QoS 0 silently, QoS 1/2 answered with reason code 0x97
  "Quota exceeded" (emqx_channel:process_publish/2) — which an MQTT 3.1.1 PUBACK cannot carry, so a 3.1.1
  client sees a plain PUBACK. 5.10 no longer pauses reading from the socket.
- Over ``max_conn_rate`` the acceptor closes the new connection and, for 100 ms, closes every connection it
  accepts (esockd_acceptor token_request/suspending, emqx_esockd_limiter.erl ``PAUSE_INTERVAL``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

PAUSE_INTERVAL_S = 0.1          # emqx_esockd_limiter.erl: the acceptor's pause after a refused connection


@dataclass(frozen=True)
class Rate:
    """``capacity`` tokens per ``interval_ms`` (``"10/s"``, ``"64KB/s"``, ``"300/10m"``)."""

    capacity: int
    interval_ms: int


@dataclass(frozen=True)
class LimiterOptions:
    """emqx_limiter:config/2 for one limiter name: the rate and, optionally, the burst."""

    rate: Rate
    burst: Rate | None = None

    @property
    def burst_capacity(self) -> int:
        return self.burst.capacity + self.rate.capacity if self.burst else 0


class Bucket:
    """One exclusive token bucket (emqx_limiter_exclusive.erl), clocked in monotonic milliseconds."""

    __slots__ = ("options", "tokens", "last_time", "last_burst_time")

    def __init__(self, options: LimiterOptions, now_ms: float | None = None) -> None:
        now = _now_ms() if now_ms is None else now_ms
        self.options = options
        self.tokens: float = options.rate.capacity + options.burst_capacity
        self.last_time = now
        self.last_burst_time = now

    def try_consume(self, amount: int, now_ms: float | None = None) -> bool:
        if amount <= self.tokens:
            self.tokens -= amount
            return True
        now = _now_ms() if now_ms is None else now_ms
        rate = self.options.rate
        if now >= self.last_time + rate.interval_ms:
            increment = rate.capacity * (now - self.last_time) / rate.interval_ms
            self.tokens = min(rate.capacity, self.tokens + increment)
            self.last_time = now
            if self.tokens >= amount:
                self.tokens -= amount
                return True
        burst = self.options.burst
        if burst is None or now < self.last_burst_time + burst.interval_ms:
            return False
        self.last_burst_time = now
        self.tokens = rate.capacity + self.options.burst_capacity
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False

    def put_back(self, amount: int) -> None:
        self.tokens += amount


class PublishQuota:
    """One client's ``bytes`` and ``messages`` buckets (emqx_limiter_client_container)."""

    __slots__ = ("bytes", "messages")

    def __init__(self, bytes_options: LimiterOptions | None, messages_options: LimiterOptions | None) -> None:
        self.bytes = Bucket(bytes_options) if bytes_options else None
        self.messages = Bucket(messages_options) if messages_options else None

    def try_consume(self, payload_size: int) -> bool:
        now = _now_ms()
        if self.bytes is not None and not self.bytes.try_consume(payload_size, now):
            return False
        if self.messages is not None and not self.messages.try_consume(1, now):
            if self.bytes is not None:
                self.bytes.put_back(payload_size)
            return False
        return True


class ConnectionRate:
    """A listener's ``max_conn_rate``: accept, or refuse and keep refusing for ``PAUSE_INTERVAL_S``."""

    __slots__ = ("bucket", "suspended_until")

    def __init__(self, options: LimiterOptions) -> None:
        self.bucket = Bucket(options)
        self.suspended_until = 0.0

    def admit(self) -> bool:
        now = _now_ms()
        if now < self.suspended_until:
            return False
        if self.bucket.try_consume(1, now):
            return True
        self.suspended_until = now + PAUSE_INTERVAL_S * 1000
        return False


def _now_ms() -> float:
    return time.monotonic() * 1000.0
