"""fleetctl/ports.py: parallel test workers choose ports from disjoint slices, and one process never hands out the
same port twice in a row — two stacks on one port would share connections through SO_REUSEPORT instead of
failing."""
from __future__ import annotations

import itertools

import pytest

from fleetctl import ports


def slices(monkeypatch, count: int) -> list[range]:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    found = []
    for index in range(count):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        found.append(ports.port_range())
    return found


@pytest.mark.parametrize("count", [2, 3, 8])
def test_workers_get_disjoint_slices_below_the_ephemeral_range(monkeypatch, count):
    found = slices(monkeypatch, count)
    assert all(len(r) >= 200 for r in found)
    for first, second in itertools.pairwise(found):
        assert first.stop <= second.start
    assert found[-1].stop <= ports._ephemeral_low()


def test_a_worker_hands_out_ports_of_its_own_slice_each_once(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    chosen = [ports.free_port() for _ in range(50)]
    assert len(set(chosen)) == 50
    assert all(port in ports.port_range() for port in chosen)


def test_outside_xdist_the_whole_range_is_used(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    whole = ports.port_range()
    assert whole.stop == ports._ephemeral_low() and len(whole) >= 1000
    assert slices(monkeypatch, 2)[0].start == whole.start
