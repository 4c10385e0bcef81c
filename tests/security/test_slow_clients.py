"""Slow and half-open clients (slowloris) against the api and authsvc, no login needed: 200 connections stuck in
their request — idle after connecting, trickling their headers, trickling their body — and re-opened whenever
the server closes one, must not slow normal requests down, and the servers must close the stuck ones.

Normal requests are timed before the attack and during it, in the same test; only the ratio is asserted, and
loosely (the machine is shared): the server this replaced did not answer at all under this attack (every
thread held by a half-sent request). The stack is this module's own, with short header and body timeouts so
the closing is seen within seconds (docs/OPERATIONS.md, HTTP servers).
"""
from __future__ import annotations

import os
import statistics
import time

import pytest

from fleetctl.stack import Stack, StackConfig
from tests.conftest import free_ports, track_rule_actions
from tests.support.operators import ApiClient, unique
from tests.support.reliability import record
from tests.support.slow_clients import SlowClients
from tests.support.vehicle import MqttVehicle
from tests.support.waiting import wait_until

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0
ATTACK = {"idle": 70, "headers": 70, "body": 60}     # 200 connections at any moment
ROUNDS = 5
MAX_SLOWDOWN = 10.0     # median under attack ÷ median before; loose on purpose, see the module docstring
REQUEST_TIMEOUT_S = 20  # a normal request that waits longer fails the test


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory):
    config = StackConfig(state_dir=tmp_path_factory.mktemp("slow-clients-stack"), ports=free_ports(),
                         durable=False, components=("authsvc", "broker", "api"),
                         extra_env={"FLEET_LOG_LEVEL": os.environ.get("FLEET_TEST_LOG_LEVEL", "INFO"),
                                    "API_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                                    "API_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
                                    "AUTHSVC_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S)})
    stack = Stack(config, out=lambda line: None)
    stack.start()
    track_rule_actions(stack)
    yield stack
    stack.stop("slow-client tests finished")


@pytest.fixture(scope="module")
def slow_admin(slow_stack) -> ApiClient:
    return ApiClient(slow_stack.url("api")).login("admin", slow_stack.secrets["FLEET_ADMIN_PASSWORD"])


def _port(stack: Stack, component: str) -> int:
    return getattr(stack.config.ports, component)


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _medians(operations: dict, rounds: int = ROUNDS) -> dict[str, float]:
    """Median seconds of each operation over ``rounds`` rounds (each operation asserts its own answer)."""
    samples: dict[str, list[float]] = {name: [] for name in operations}
    for _ in range(rounds):
        for name, call in operations.items():
            samples[name].append(_timed(call))
    return {name: statistics.median(values) for name, values in samples.items()}


def _assert_kept_latency(before: dict[str, float], during: dict[str, float]) -> dict[str, float]:
    ratios = {name: round(during[name] / before[name], 2) for name in before}
    slow = {name: ratio for name, ratio in ratios.items() if ratio > MAX_SLOWDOWN}
    assert not slow, f"normal requests slowed down under attack (ratio during ÷ before): {ratios}"
    return ratios


def _assert_stuck_ones_closed(attack: SlowClients, kinds: tuple[str, ...], timeout: float) -> None:
    for kind in kinds:
        first = attack.first(kind)
        wait_until(lambda first=first: all(c.closed_by_server_at is not None for c in first), timeout=timeout,
                   message=lambda first=first, kind=kind: (
                       f"{kind}: {sum(c.closed_by_server_at is None for c in first)} of {len(first)} "
                       "stuck connections still open"))


def test_the_api_keeps_its_latency_under_200_slow_connections(slow_stack, slow_admin):
    vehicle_id = unique("veh")
    fleet_id = unique("fleet")
    assert slow_admin.post("/api/v1/fleets", json={"id": fleet_id, "name": fleet_id}).status_code == 201
    assert slow_admin.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": fleet_id}).status_code == 201
    password = slow_stack.secrets["FLEET_ADMIN_PASSWORD"]
    client = ApiClient(slow_stack.url("api"))

    def login():
        response = client.post("/api/v1/auth/login", json={"username": "admin", "password": password},
                               timeout=REQUEST_TIMEOUT_S)
        assert response.status_code == 200, response.text

    def list_vehicles():
        response = slow_admin.get("/api/v1/vehicles", timeout=REQUEST_TIMEOUT_S)
        assert response.status_code == 200, response.text

    def emergency_stop():
        response = slow_admin.post(f"/api/v1/vehicles/{vehicle_id}/emergency-stop",
                                   json={"reason": "slow-client test"}, timeout=REQUEST_TIMEOUT_S)
        assert response.status_code in (200, 202), response.text

    operations = {"login": login, "GET /vehicles": list_vehicles, "POST emergency-stop": emergency_stop}
    before = _medians(operations)
    with SlowClients("127.0.0.1", _port(slow_stack, "api"), ATTACK, path="/api/v1/auth/login") as attack:
        during = _medians(operations)
        ratios = _assert_kept_latency(before, during)
        # Never-finished heads are closed by the header timeout, never-finished bodies by the body timeout (408);
        # 60 trickled bodies against 16 threads: the api reads bodies before a thread is taken.
        _assert_stuck_ones_closed(attack, ("idle", "headers"), HEADER_TIMEOUT_S + 15)
        _assert_stuck_ones_closed(attack, ("body",), BODY_TIMEOUT_S + 15)
        assert {c.status for c in attack.first("body")} == {408}
        assert attack.failed_connects == 0
        replaced = sum(attack.closed_by_server().values())
    record("security", "api under 200 slow connections (slowloris)", connections=sum(ATTACK.values()),
           closed_by_timeouts=replaced, **{f"slowdown {name}": ratio for name, ratio in ratios.items()})


def test_authsvc_keeps_vehicles_connecting_under_200_slow_connections(slow_stack, slow_admin):
    fleet_id = unique("fleet")
    assert slow_admin.post("/api/v1/fleets", json={"id": fleet_id, "name": fleet_id}).status_code == 201
    vehicle_id = unique("veh")
    created = slow_admin.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": fleet_id})
    assert created.status_code == 201, created.text
    vehicle = MqttVehicle("127.0.0.1", slow_stack.config.ports.mqtt, vehicle_id)
    secret = vehicle.register(created.json()["enrollment"]["token"])

    def connect():  # the broker asks authsvc: authn at CONNECT, authz at SUBSCRIBE
        vehicle.connect(secret, timeout=REQUEST_TIMEOUT_S)
        vehicle.subscribe_commands()
        vehicle.close()

    before = _medians({"vehicle CONNECT + SUBSCRIBE": connect})
    # Without the broker token: authsvc answers 401 before reading a body, so a trickled body holds nothing.
    with SlowClients("127.0.0.1", _port(slow_stack, "authsvc"), ATTACK, path="/mqtt/authn") as attack:
        during = _medians({"vehicle CONNECT + SUBSCRIBE": connect})
        ratios = _assert_kept_latency(before, during)
        _assert_stuck_ones_closed(attack, ("idle", "headers"), HEADER_TIMEOUT_S + 15)
        _assert_stuck_ones_closed(attack, ("body",), 15)
        assert {c.status for c in attack.first("body")} == {401}
        assert attack.failed_connects == 0
    record("security", "authsvc under 200 slow connections (slowloris)", connections=sum(ATTACK.values()),
           **{f"slowdown {name}": ratio for name, ratio in ratios.items()})

