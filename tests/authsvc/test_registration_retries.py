"""Registration over MQTT when something fails: what authsvc answers the broker's ``http:registration`` action
decides whether the request is retried. EMQX retries only 429, 503 and connection failures and drops the request
on any other status (docs/EMQX.md §5.6a), so these tests check the status authsvc answered — not merely that the
vehicle got its answer, which a broker kinder than EMQX would also deliver.

A stack of its own (authsvc and the broker, from the same launcher as ``make run``) with three fault points on
loopback:

* the broker's calls to ``/mqtt/register`` go through a relay that records the status of every answer;
* authsvc's calls to the broker API go through a relay that can refuse the ``register/response`` publish;
* authsvc's database connections go through a TCP proxy that can be cut (the broker's own connector is not).
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web

from fleetcore import registry, topics
from fleetcore.db import Database
from fleetctl.ports import free_port
from fleetctl.stack import API_KEY_NAME, Stack, StackConfig
from tests.broker.compat_support import TcpProxy
from tests.conftest import free_ports
from tests.support.operators import unique
from tests.support.vehicle import MqttVehicle
from tests.support.waiting import wait_until

REGISTER = "/mqtt/register"


class BackgroundLoop:
    """An asyncio loop in a thread, for the relays and the proxy of a synchronous test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fault-points", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class HttpRelay:
    """Forwards every request to ``target`` and records ``(path, status)`` of each answer; ``refuse(n, status,
    when)`` answers the next ``n`` requests that ``when(path, body)`` selects with ``status`` itself."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.calls: list[tuple[str, int]] = []
        self._refusals: list[tuple[int, Callable[[str, bytes], bool]]] = []

    def refuse(self, count: int, status: int, when: Callable[[str, bytes], bool]) -> None:
        self._refusals = [(status, when)] * count

    def statuses(self, path: str) -> list[int]:
        return [status for called, status in list(self.calls) if called == path]

    def reset(self) -> None:
        self.calls.clear()
        self._refusals = []

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.session.close()

    async def _relay(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self._refusals and self._refusals[0][1](request.path, body):
            status = self._refusals.pop(0)[0]
            self.calls.append((request.path, status))
            return web.json_response({"code": "REFUSED", "message": "refused by the test's relay"}, status=status)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self.session.request(request.method, self.target + request.path_qs, headers=headers,
                                        data=body) as answer:
            data = await answer.read()
            self.calls.append((request.path, answer.status))
            return web.Response(status=answer.status, body=data,
                                headers={"Content-Type": answer.headers.get("Content-Type", "application/json")})


class RelayedStack(Stack):
    """The embedded stack with the broker's registration action pointed at a relay in front of authsvc."""

    registration_url = ""

    def broker_env(self) -> dict[str, str]:
        env = super().broker_env()
        env["EMQX_CONNECTORS__HTTP__AUTHSVC__URL"] = self.registration_url
        return env


class Rig:
    def __init__(self, state_dir) -> None:
        self.loop = BackgroundLoop()
        self.lines: list[tuple[str, str]] = []
        ports = free_ports()
        self.stack = RelayedStack(StackConfig(state_dir=state_dir, ports=ports, durable=False,
                                              components=("authsvc", "broker")),
                                  out=lambda _message: None, on_line=lambda name, line: self.lines.append((name, line)))
        self.to_authsvc = HttpRelay(self.stack.url("authsvc"))
        self.to_broker_api = HttpRelay(self.stack.url("emqx_api"))
        self.database = TcpProxy("127.0.0.1", ports.postgres, free_port())
        for part in (self.to_authsvc, self.to_broker_api, self.database):
            self.loop.run(part.start())
        self.stack.registration_url = self.to_authsvc.url
        self.stack.config.extra_env.update({
            "DATABASE_URL": self.stack.database_url.replace(f":{ports.postgres}/", f":{self.database.port}/"),
            "FLEET_EMQX_API_URL": self.to_broker_api.url,
            "FLEET_LOG_FORMAT": "json",
        })
        self.stack.start()
        self.db = Database(self.stack.database_url, max_connections=2, application_name="tests-registration-retries")
        self.fleet = unique("fleet")
        with self.db.transaction() as cur:
            cur.execute("INSERT INTO fleets (id, name) VALUES (%s, %s)", (self.fleet, self.fleet))

    def close(self) -> None:
        self.db.close()
        self.stack.stop("registration retry tests finished")
        for part in (self.to_authsvc, self.to_broker_api, self.database):
            self.loop.run(part.stop())
        self.loop.close()

    def enrolling_vehicle(self) -> tuple[MqttVehicle, str]:
        """A new vehicle, connected with its enrollment token and subscribed to its register/response topic."""
        with self.db.transaction() as cur:
            enrollment = registry.create_vehicle(cur, self.stack.secrets["FLEET_DEVICE_SECRET_KEY"],
                                                 vehicle_id=unique("veh"), fleet_id=self.fleet, actor_type="system",
                                                 actor_id="tests")
        vehicle = MqttVehicle("127.0.0.1", self.stack.config.ports.mqtt, enrollment.vehicle_id)
        vehicle.connect_enrolling(enrollment.token)
        assert vehicle.subscribe(topics.vehicle_topic(vehicle.vehicle_id, topics.Kind.REGISTER_RESPONSE)) == [1]
        return vehicle, enrollment.token

    def action_metrics(self) -> dict[str, Any]:
        response = requests.get(f"{self.stack.url('emqx_api')}/api/v5/actions/http:registration/metrics",
                                auth=(API_KEY_NAME, self.stack.secrets["FLEET_EMQX_API_SECRET"]), timeout=5)
        assert response.status_code == 200, response.text
        return response.json()["metrics"]

    def events(self, component: str, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The component's log events named ``event`` with these field values (JSON log lines)."""
        found = []
        for name, line in list(self.lines):
            if name == component and line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                    found.append(record)
        return found

    def await_events(self, count: int, component: str, event: str, **fields: Any) -> list[dict[str, Any]]:
        """Exactly ``count`` such events, once their lines have come through the component's log pipe."""
        wait_until(lambda: len(self.events(component, event, **fields)) >= count, timeout=5,
                   message=f"{component} did not log {count} × {event} {fields}")
        found = self.events(component, event, **fields)
        assert len(found) == count, found
        return found

    def count(self, sql: str, *params) -> int:
        with self.db.transaction() as cur:
            cur.execute(sql, params)
            return cur.fetchone()["n"]

    def log_in(self, vehicle_id: str, secret: str) -> None:
        """Connect with the device secret (raises ConnectRefused if it does not work)."""
        MqttVehicle("127.0.0.1", self.stack.config.ports.mqtt, vehicle_id).connect(secret).close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    the_rig = Rig(tmp_path_factory.mktemp("registration-retries"))
    yield the_rig
    the_rig.close()


@pytest.fixture(autouse=True)
def _fresh_fault_points(rig):
    rig.to_authsvc.reset()
    rig.to_broker_api.reset()
    yield
    if rig.database.server is None:          # a failed test left the database cut off
        rig.loop.run(rig.database.start())


def _answer(vehicle: MqttVehicle) -> dict:
    return vehicle.wait_for_message(lambda m: m.topic.endswith("/register/response"), timeout=30).json()


def _register_statuses(rig: Rig) -> list[int]:
    """What authsvc answered the broker's /mqtt/register calls, once it has answered 200."""
    return wait_until(lambda: (s := rig.to_authsvc.statuses(REGISTER)) and s[-1] == 200 and s, timeout=10,
                      message="authsvc never answered the broker 200")


def _delta(before: dict, after: dict) -> dict[str, int]:
    return {key: after[key] - before[key] for key in ("success", "failed")}


def test_database_down_is_503_and_the_broker_retries_until_the_vehicle_has_its_secret(rig):
    vehicle, token = rig.enrolling_vehicle()
    before = rig.action_metrics()
    rig.loop.run(rig.database.stop())
    try:
        request, _info = vehicle.publish_nowait(topics.Kind.REGISTER_REQUEST, {"enrollment_token": token})
        wait_until(lambda: rig.to_authsvc.statuses(REGISTER).count(503) >= 2, timeout=30,
                   message="the broker did not repeat the request authsvc answered 503")
    finally:
        rig.loop.run(rig.database.start())
    answer = _answer(vehicle)
    vehicle.close()

    statuses = _register_statuses(rig)
    assert set(statuses[:-1]) == {503}
    assert (answer["type"], answer["data"]["request_msg_id"]) == ("register.accepted", request["msg_id"])
    rig.log_in(vehicle.vehicle_id, answer["data"]["password"])
    assert _delta(before, rig.action_metrics()) == {"success": 1, "failed": 0}
    unavailable = rig.await_events(len(statuses) - 1, "authsvc", "authsvc.backend_unavailable",
                                   vehicle=vehicle.vehicle_id)
    assert {(e["level"], e["what"]) for e in unavailable} == {("error", "database")}


@pytest.mark.parametrize("refusal", [401, 500])
def test_a_refused_answer_is_503_and_the_retry_delivers_the_same_secret_once(rig, refusal):
    vehicle, token = rig.enrolling_vehicle()
    rig.to_broker_api.refuse(2, refusal, lambda path, body: path == "/api/v5/publish"
                             and f"{vehicle.vehicle_id}/register/response".encode() in body)
    before = rig.action_metrics()
    request, _info = vehicle.publish_nowait(topics.Kind.REGISTER_REQUEST, {"enrollment_token": token})
    answer = _answer(vehicle)
    vehicle.close()

    assert _register_statuses(rig) == [503, 503, 200]
    assert rig.to_broker_api.statuses("/api/v5/publish") == [refusal, refusal, 200]
    assert (answer["type"], answer["data"]["request_msg_id"]) == ("register.accepted", request["msg_id"])
    rig.log_in(vehicle.vehicle_id, answer["data"]["password"])
    assert rig.count("SELECT count(*) AS n FROM device_credentials WHERE vehicle_id = %s AND revoked_at IS NULL",
                     vehicle.vehicle_id) == 1
    failed = rig.await_events(2, "authsvc", "registration.answer_failed", vehicle=vehicle.vehicle_id)
    assert [(e["level"], e["broker_status"]) for e in failed] == [("error", refusal)] * 2
    assert _delta(before, rig.action_metrics()) == {"success": 1, "failed": 0}


def test_a_request_too_large_to_be_a_rule_output_is_413_not_retried_logged_and_counted(rig):
    vehicle, token = rig.enrolling_vehicle()
    before = rig.action_metrics()
    payload = json.dumps({"v": 1, "msg_id": "oversized", "data": {"enrollment_token": token, "model": "x" * 200_000}})
    # QoS 0: whatever the broker does with the connection afterwards, nothing is sent twice.
    vehicle.publish_raw(topics.vehicle_topic(vehicle.vehicle_id, topics.Kind.REGISTER_REQUEST), payload, qos=0)
    after = wait_until(lambda: (m := rig.action_metrics())["failed"] > before["failed"] and m, timeout=15,
                       message="the broker never gave up on the oversized request")
    vehicle.close()

    assert rig.to_authsvc.statuses(REGISTER) == [413]
    assert _delta(before, after) == {"success": 0, "failed": 1}
    [bad_call] = rig.await_events(1, "authsvc", "registration.bad_call", reason="oversized")
    assert bad_call["level"] == "error"
    # one line per failed batch, naming its clients (emqx/standin/rules/actions/base.py)
    [dropped] = rig.await_events(1, "broker", "action.failed",
                                 clientids=[topics.enrollment_client_id(vehicle.vehicle_id)])
    assert (dropped["level"], dropped["action"], dropped["failed"]) == ("error", "http:registration", 1)

