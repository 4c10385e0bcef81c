"""``make test`` runs the tests on two pytest-xdist workers. fleetctl/ports.py: the workers choose ports from
disjoint slices, and one process never hands out the same port twice in a row — two stacks on one port would share
connections through SO_REUSEPORT instead of failing. tests/support/xdist.py: a file, or a package with a
package-scoped stack, runs on one worker."""
from __future__ import annotations

import itertools

import pytest

from fleetcore import paths
from fleetctl import ports
from tests.support.xdist import StackScopeScheduling, packages_with_package_fixtures


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


def test_a_file_or_a_package_with_a_package_stack_is_one_unit_of_work():
    assert "tests/failure/" in packages_with_package_fixtures(paths.PROJECT_ROOT)
    assert "tests/api/" not in packages_with_package_fixtures(paths.PROJECT_ROOT)
    scheduler = StackScopeScheduling.__new__(StackScopeScheduling)   # without an xdist session
    scheduler.packages = ("tests/failure/",)
    assert scheduler._split_scope("tests/failure/test_outages.py::test_x[1]") == "tests/failure/"
    assert scheduler._split_scope("tests/failure/test_ingest_faults.py::test_y") == "tests/failure/"
    assert scheduler._split_scope("tests/api/test_auth.py::TestLogin::test_z") == "tests/api/test_auth.py"
    assert scheduler._split_scope("tests/api/test_auth.py::test_w") == "tests/api/test_auth.py"


def test_granians_own_threads_get_the_thread_tracer():
    """fleetcore/http_server.traced_threads: coverage of authsvc under make test. A thread started outside the
    threading module (as granian's are) gets the process's thread tracer before the application runs in it; without
    one the application is served unchanged."""
    import _thread
    import sys
    import threading

    from fleetcore.http_server import traced_threads

    def app(environ, start_response):
        return [sys.gettrace()]

    def tracer(frame, event, arg):
        return None

    answers: list = []
    done = threading.Event()
    previous = threading.gettrace()            # coverage's own under make test
    try:
        threading.settrace(None)
        assert traced_threads(app) is app      # production: no tracer, nothing wrapped
        threading.settrace(tracer)
        wrapped = traced_threads(app)
    finally:
        threading.settrace(previous)

    def native_thread():
        answers.append((sys.gettrace(), wrapped({}, None)[0]))
        sys.settrace(None)
        done.set()

    _thread.start_new_thread(native_thread, ())
    assert done.wait(10)
    assert answers == [(None, tracer)]
