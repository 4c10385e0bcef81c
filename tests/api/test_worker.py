"""The api's worker (``python -m api.worker``) is its own process: it leads through the advisory lock and says so
on its health endpoint, which fails once its loop is stuck. (What it does — dispatching queued missions, expiry,
time-outs — is in test_missions.py; leader take-over and outages in tests/failure.)"""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from api.config import WorkerConfig
from api.worker import Worker, serve_health
from fleetcore import paths
from fleetctl.ports import free_port


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_the_stacks_worker_leads_and_is_healthy(stack):
    if "worker" not in {c.name for c in stack.started}:
        pytest.skip("the worker is not running")
    status, body = get(f"{stack.url('worker')}/healthz")
    assert status == 200 and body["status"] == "ok" and body["role"] == "leader", body


@pytest.fixture
def idle_worker():
    """A standby worker whose loop is not running, with its health endpoint on a free port."""
    config = WorkerConfig(database_url="postgresql://unused", emqx_api_url="http://unused", emqx_api_key="k",
                          emqx_api_secret="s" * 16, bind=f"127.0.0.1:{free_port()}", stall_after_s=30.0)
    worker = Worker(config, dispatcher=None, emergency=None)
    worker.role = worker.notifier.role = "standby"
    worker.telemetry.state = "draining"
    server = serve_health(worker, config.bind)
    yield worker, f"http://{config.bind}"
    server.shutdown()


def test_health_fails_once_the_loop_stops_turning(idle_worker):
    worker, url = idle_worker
    status, body = get(f"{url}/healthz")
    assert (status, body["status"], body["role"]) == (200, "ok", "standby") and body["last_turn_s_ago"] < 30
    worker.last_turn -= 31.0
    status, body = get(f"{url}/healthz")
    assert status == 503 and body["status"] == "stalled" and body["last_turn_s_ago"] >= 31.0


@pytest.mark.parametrize(("thread", "key", "state_attribute", "working"),
                         [("notifier", "alarms", "role", "standby"),
                          ("telemetry", "telemetry_queue", "state", "draining")],
                         ids=["alarm thread", "telemetry drain"])
def test_health_fails_once_a_thread_of_the_worker_stops_turning(idle_worker, thread, key, state_attribute, working):
    worker, url = idle_worker
    part = getattr(worker, thread)
    assert get(f"{url}/healthz")[1][key][state_attribute] == working
    part.last_turn -= 31.0
    status, body = get(f"{url}/healthz")
    assert (status, body["status"]) == (503, "stalled") and body[key]["last_turn_s_ago"] >= 31.0
    part.last_turn += 31.0
    setattr(part, state_attribute, "waiting_for_database")
    status, body = get(f"{url}/healthz")
    assert (status, body["status"], body[key][state_attribute]) == (503, "not_working", "waiting_for_database")


@pytest.mark.parametrize("role", ["starting", "waiting_for_database", "restarting"])
def test_health_fails_while_the_worker_does_not_work(idle_worker, role):
    worker, url = idle_worker
    worker.role = role
    status, body = get(f"{url}/healthz")
    assert (status, body["status"], body["role"]) == (503, "not_working", role)


def test_other_requests_get_json_errors(idle_worker):
    _, url = idle_worker
    status, body = get(f"{url}/metrics")
    assert status == 404 and set(body) == {"code", "message", "details"} and body["code"] == "not_found"
    request = urllib.request.Request(f"{url}/healthz", data=b"{}", method="POST")
    try:
        urllib.request.urlopen(request, timeout=5)
    except urllib.error.HTTPError as error:
        assert error.code == 405 and json.load(error)["code"] == "method_not_allowed"
    else:
        pytest.fail("POST /healthz was accepted")


@pytest.mark.parametrize(("variable", "value"), [("WORKER_TELEMETRY_SET_SIZE", "0"),
                                                 ("WORKER_TELEMETRY_POLL_S", "0"),
                                                 ("WORKER_TELEMETRY_POLL_S", "-1")])
def test_a_telemetry_drain_setting_that_would_spin_or_never_drain_stops_the_worker_at_start(stack, variable, value):
    # a set size of 0 would never drain; a poll of 0 would spin a core: the real process refuses to start (exit 2)
    env = stack.service_env() | {"WORKER_BIND": f"127.0.0.1:{free_port()}", variable: value}
    done = subprocess.run([sys.executable, "-m", "api.worker"], env=env, capture_output=True, text=True, timeout=60,
                          cwd=paths.PROJECT_ROOT)
    assert done.returncode == 2
    assert f"{variable} must be at least" in done.stderr + done.stdout
