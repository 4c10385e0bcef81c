"""Reconnect backoff and the offline telemetry buffer."""
from __future__ import annotations

import json
import random

import pytest

from fleetcore import envelope
from simulator.backoff import Backoff
from simulator.outbox import OfflineBuffer


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    backoff = Backoff(1.0, 30.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(10)]
    for attempt, delay in enumerate(delays):
        ceiling = min(30.0, 2 ** attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 30.0


def test_backoff_jitter_spreads_a_fleet():
    first_delays = {round(Backoff(1.0, 60.0, random.Random(seed)).next_delay(), 3) for seed in range(50)}
    assert len(first_delays) > 40


def test_backoff_reset_starts_over():
    backoff = Backoff(1.0, 60.0, random.Random(1))
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_backoff_rejects_nonsense():
    with pytest.raises(ValueError):
        Backoff(0, 10)


def _messages(count: int) -> list[dict]:
    return [envelope.message({"lat": 48.0, "lon": 11.0, "i": i}, seq=i) for i in range(count)]


def test_buffer_uploads_oldest_first_in_batches_of_bounded_count():
    buffer = OfflineBuffer(capacity=1000)
    for message in _messages(250):
        buffer.add(message)
    batches = [json.loads(payload) for payload in buffer.drain_batches(max_items=100)]
    assert [len(b["batch"]) for b in batches] == [100, 100, 50]
    assert all(b["v"] == 1 for b in batches)
    assert [m["seq"] for b in batches for m in b["batch"]] == list(range(250))
    assert len(buffer) == 0


def test_buffer_batches_respect_the_byte_limit():
    buffer = OfflineBuffer()
    for message in _messages(50):
        buffer.add(message)
    payloads = list(buffer.drain_batches(max_items=1000, max_bytes=2000))
    assert len(payloads) > 1
    assert all(len(p) <= 2000 for p in payloads)
    assert sum(len(json.loads(p)["batch"]) for p in payloads) == 50


def test_a_full_buffer_drops_the_oldest_and_counts_it():
    buffer = OfflineBuffer(capacity=10)
    for message in _messages(15):
        buffer.add(message)
    assert len(buffer) == 10 and buffer.dropped == 5
    batch = json.loads(next(buffer.drain_batches()))
    assert batch["batch"][0]["seq"] == 5
