"""The simulator's MQTT vehicle falls back to HTTP by itself and comes back (docs/PROTOCOL.md → HTTP fallback).

A TCP proxy stands between the vehicle and the real broker: closed, every CONNECT is refused (the broker
"cannot be reached"); opened, it forwards to the broker. The vehicle must switch to the api's vehicle routes after
the configured number of failed attempts, come online and run a mission there, and return to MQTT — presence
``ONLINE`` on the broker, commands over MQTT again — once the proxy opens. The rule's two halves (a minimum span,
and a refused CONNACK not counting) each have a test that fails without them.
"""
from __future__ import annotations

import socket
import threading

import pytest

from fleetctl.ports import free_port
from simulator.credentials_store import CredentialsStore
from simulator.fleet import Fleet, FleetOptions
from simulator.motion import offset
from simulator.vehicle import BrokerAddress, State, Transport
from tests.broker.compat_support import BackgroundLoop, TcpProxy
from tests.support.database import rows
from tests.support.operators import unique
from tests.support.waiting import wait_until

HOME = (48.1372, 11.5755)
FAST = {"workers": 1, "ramp_s": 0.0, "seed": 7, "time_scale": 20.0, "progress_every_s": 0.5, "patrol": False,
        "home": HOME, "spread_m": 1.0, "backoff_base_s": 0.05, "backoff_cap_s": 0.2}


@pytest.fixture
def broker_proxy(stack):
    """127.0.0.1:<port> → the stack's broker; closed (connection refused) until ``proxy.up()``."""
    loop = BackgroundLoop()
    proxy = TcpProxy("127.0.0.1", stack.config.ports.mqtt, free_port())
    proxy.up = lambda: loop.run(proxy.start())
    yield proxy
    loop.run(proxy.stop())
    loop.close()


@pytest.fixture
def simulate(tmp_path):
    started: list[Fleet] = []

    def _simulate(vehicle_id: str, secret: str, broker: BrokerAddress, **options) -> Fleet:
        state_dir = tmp_path / f"state-{len(started)}"
        CredentialsStore(state_dir).store_secret(vehicle_id, None, secret)
        sim = Fleet(FleetOptions(vehicle_ids=[vehicle_id], broker=broker, state_dir=state_dir, **(FAST | options)))
        sim.start()
        started.append(sim)
        return sim
    yield _simulate
    for sim in started:
        sim.stop()


def _mission(operator, vehicle_id: str, name: str) -> str:
    a = offset(*HOME, 90.0, 80.0)
    response = operator.post("/api/v1/missions", json={
        "vehicle_id": vehicle_id, "name": name,
        "waypoints": [{"lat": a[0], "lon": a[1]}, {"lat": HOME[0], "lon": HOME[1], "name": "home"}]})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _completed(operator, mission_id: str) -> None:
    wait_until(lambda: operator.get(f"/api/v1/missions/{mission_id}").json()["state"] == "completed", 60,
               message=lambda: f"mission {operator.get(f'/api/v1/missions/{mission_id}').json()['state']}")


def _dispatch_acked_via(stack, mission_id: str) -> str | None:
    found = rows(stack.database_url, "SELECT acked_via FROM vehicle_commands WHERE mission_id = %s "
                                     "AND type = 'mission.dispatch'", (mission_id,))
    assert len(found) == 1, found
    return found[0]["acked_via"]


def test_an_unreachable_broker_sends_the_vehicle_to_http_and_it_returns_to_mqtt(stack, enroll, operator, api_url,
                                                                                broker_proxy, simulate):
    vehicle_id = (registered := enroll(connect=False)).vehicle_id
    sim = simulate(vehicle_id, registered.secret, BrokerAddress("127.0.0.1", broker_proxy.port),
                   api_url=api_url, fallback_after=3, fallback_min_span_s=0.0, probe_every_s=0.5)
    vehicle = sim.vehicle(vehicle_id)

    wait_until(lambda: vehicle.state == State.HTTP and vehicle.transport == "http", 30,
               message=lambda: f"state {vehicle.state}, last error {vehicle.last_error}")
    assert vehicle.last_error.startswith("3 connection attempts in a row failed"), vehicle.last_error
    assert broker_proxy.connections == 0, "the broker was never reached"
    presence = wait_until(lambda: (p := operator.get(f"/api/v1/vehicles/{vehicle_id}").json()["presence"])["online"]
                          and p, 15, message="online over HTTP")
    assert presence["connection_state"] is None, "no MQTT connection announced"

    first = _mission(operator, vehicle_id, "over the fallback")
    _completed(operator, first)
    assert _dispatch_acked_via(stack, first) == "http"
    assert vehicle.state == State.HTTP and sim.snapshot().fallbacks == 1

    broker_proxy.up()
    wait_until(lambda: vehicle.state == State.ONLINE and vehicle.transport == "mqtt", 60,
               message=lambda: f"state {vehicle.state}, transport {vehicle.transport}, last {vehicle.last_error}")
    wait_until(lambda: operator.get(f"/api/v1/vehicles/{vehicle_id}").json()["presence"]["connection_state"]
               == "ONLINE", 15, message="ONLINE published on the broker")
    second = _mission(operator, vehicle_id, "back on MQTT")
    _completed(operator, second)
    assert _dispatch_acked_via(stack, second) == "mqtt", "the confirming mission event came over MQTT"
    snapshot = sim.snapshot()
    assert (snapshot.fallbacks, snapshot.connects, snapshot.missions["completed"]) == (1, 1, 2)
    assert snapshot.loop_errors == 0


def test_no_fallback_before_the_minimum_span(stack, simulate, api_url):
    """Three quick failures are not enough while the first is younger than fallback_min_span_s."""
    closed = free_port()
    sim = simulate(unique("span"), "not-used", BrokerAddress("127.0.0.1", closed), api_url=api_url,
                   fallback_after=3, fallback_min_span_s=3600.0)
    vehicle = next(iter(sim.vehicles.values()))
    wait_until(lambda: vehicle._unreachable >= 6, 30, message=lambda: f"failed attempts: {vehicle._unreachable}")
    assert vehicle.state != State.HTTP and vehicle.transport == "mqtt" and sim.snapshot().fallbacks == 0


def test_a_refused_connack_is_no_reason_to_fall_back(stack, simulate, api_url):
    """The broker answers "not authorized": HTTP would refuse the same credentials, so the vehicle stays on MQTT."""
    sim = simulate(unique("refused"), "wrong-secret", BrokerAddress("127.0.0.1", stack.config.ports.mqtt),
                   api_url=api_url, fallback_after=1, fallback_min_span_s=0.0)
    vehicle = next(iter(sim.vehicles.values()))
    wait_until(lambda: sim.snapshot().refused >= 3, 30, message=lambda: f"refusals: {sim.snapshot().refused}")
    assert vehicle.state != State.HTTP and sim.snapshot().fallbacks == 0 and vehicle._unreachable == 0


def test_transport_mqtt_never_falls_back(stack, simulate, api_url):
    sim = simulate(unique("mqttonly"), "not-used", BrokerAddress("127.0.0.1", free_port()), api_url=api_url,
                   transport=Transport.MQTT, fallback_after=1, fallback_min_span_s=0.0)
    vehicle = next(iter(sim.vehicles.values()))
    wait_until(lambda: vehicle._unreachable >= 3, 30, message=lambda: f"failed attempts: {vehicle._unreachable}")
    assert vehicle.state != State.HTTP and sim.snapshot().fallbacks == 0


def test_transport_http_uses_http_only(stack, enroll, operator, api_url, simulate):
    """A site configured as MQTT-blocked: straight to HTTP, the broker never asked."""
    vehicle_id = (registered := enroll(connect=False)).vehicle_id
    sim = simulate(vehicle_id, registered.secret, BrokerAddress("127.0.0.1", stack.config.ports.mqtt),
                   api_url=api_url, transport=Transport.HTTP)
    vehicle = sim.vehicle(vehicle_id)
    wait_until(lambda: operator.get(f"/api/v1/vehicles/{vehicle_id}").json()["presence"]["online"], 15,
               message=lambda: f"online over HTTP; state {vehicle.state}, last error {vehicle.last_error}")
    assert (vehicle.state, vehicle.transport) == (State.HTTP, "http")
    snapshot = sim.snapshot()
    assert (snapshot.fallbacks, snapshot.connects, snapshot.refused) == (1, 0, 0)
    assert sim.stop() is True, "a vehicle on HTTP stops cleanly too"
    assert vehicle.state == State.STOPPED and vehicle._http is None


def test_stopping_the_fleet_ends_the_long_poll_under_way_and_every_thread(stack, enroll, operator, api_url,
                                                                         simulate):
    """Fleet.stop returns only once no thread of the fleet runs: not the HTTP link's (its long-poll would block one
    for up to 25 s), not the I/O workers."""
    vehicle_id = (registered := enroll(connect=False)).vehicle_id
    sim = simulate(vehicle_id, registered.secret, BrokerAddress("127.0.0.1", stack.config.ports.mqtt),
                   api_url=api_url, transport=Transport.HTTP)
    vehicle = sim.vehicle(vehicle_id)
    wait_until(lambda: operator.get(f"/api/v1/vehicles/{vehicle_id}").json()["presence"]["online"], 15,
               message=lambda: f"online over HTTP; state {vehicle.state}, last error {vehicle.last_error}")
    [link] = vehicle.http_links
    wait_until(lambda: link.polls >= 1, 10, message="no long-poll under way")

    def fleet_threads() -> list[str]:
        return sorted(t.name for t in threading.enumerate() if t.is_alive()
                      and (t.name == f"http-{vehicle_id}" or t in sim.workers))
    assert fleet_threads() == sorted([f"http-{vehicle_id}"] * 2 + [w.name for w in sim.workers])

    assert sim.stop() is True
    assert fleet_threads() == [], "a thread of the fleet outlived Fleet.stop()"
    assert vehicle.state == State.STOPPED


def test_a_broker_that_never_answers_the_connect_counts_as_unreachable(stack, simulate, api_url, caplog):
    """TCP accepted, no CONNACK: after connack_timeout_s the attempt has failed (paho alone would wait for ever)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)                     # the kernel completes the handshake; nobody ever reads or answers
    try:
        with caplog.at_level("INFO", logger="simulator.vehicle"):
            sim = simulate(unique("silent"), "not-used", BrokerAddress("127.0.0.1", silent.getsockname()[1]),
                           api_url=api_url, fallback_after=2, fallback_min_span_s=0.0, connack_timeout_s=0.5,
                           backoff_base_s=0.05, backoff_cap_s=0.1)
            vehicle = next(iter(sim.vehicles.values()))
            # (its made-up secret then fails on HTTP too: the fallback is what counts here)
            wait_until(lambda: sim.snapshot().fallbacks == 1, 20,
                       message=lambda: f"state {vehicle.state}, last error {vehicle.last_error}")
    finally:
        silent.close()

    def events(name: str) -> list:
        return [r for r in caplog.records if getattr(r, "event", None) == name]
    assert len(events("vehicle.connack_timeout")) == 2, "both failed attempts ended by the CONNACK timeout"
    [fallback] = events("vehicle.http_fallback")
    assert fallback.reason.startswith("2 connection attempts in a row failed") \
        and "closed before a CONNACK" in fallback.reason, fallback.reason
