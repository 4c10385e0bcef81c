"""Metrics that answer "is it healthy?": authsvc's decisions and latencies, the dispatch queue and why missions
wait, emergency stops. Read from the running services' /metrics over HTTP, as Prometheus would."""
from __future__ import annotations

import re

import requests

from fleetcore import topics
from tests.support.operators import unique
from tests.support.vehicle import ConnectRefused, MqttVehicle
from tests.support.waiting import wait_until


def sample(text: str, name: str, **labels) -> float:
    """The value of one series in a Prometheus text exposition (0 if absent)."""
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and dict(re.findall(r'(\w+)="([^"]*)"', series)) == labels:
            return float(value)
    return 0.0


def authsvc_metrics(stack) -> str:
    response = requests.get(f"{stack.url('authsvc')}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    return response.text


def test_authsvc_counts_every_decision_by_result_and_reason_and_times_it(stack, enroll):
    before = authsvc_metrics(stack)
    unknown = unique("ghost")
    try:
        MqttVehicle("127.0.0.1", stack.config.ports.mqtt, unknown).connect("wrong", will=False)
        raise AssertionError("an unknown vehicle was let in")
    except ConnectRefused:
        pass
    vehicle = enroll()          # one enrolling CONNECT and one with the device secret
    vehicle.publish_raw(topics.vehicle_topic("someone-else", topics.Kind.TELEMETRY), b"{}")   # authz: denied

    def delta(name: str, **labels) -> float:
        return sample(authsvc_metrics(stack), name, **labels) - sample(before, name, **labels)
    wait_until(lambda: delta("fleet_authsvc_decisions_total", callout="authz", result="deny",
                             reason="other_vehicle") == 1, message="the authz denial is counted")
    assert delta("fleet_authsvc_decisions_total", callout="authn", result="deny", reason="unknown_vehicle") == 1
    assert delta("fleet_authsvc_decisions_total", callout="authn", result="allow", reason="enrollment_token") == 1
    assert delta("fleet_authsvc_decisions_total", callout="authn", result="allow", reason="device_secret") == 1
    assert delta("fleet_authsvc_callout_duration_seconds_count", callout="authn") == 3
    text = authsvc_metrics(stack)
    assert "# TYPE fleet_authsvc_callout_duration_seconds histogram" in text
    assert sample(text, "fleet_authsvc_callout_duration_seconds_bucket", callout="authn", le="+Inf") == \
        sample(text, "fleet_authsvc_callout_duration_seconds_count", callout="authn")


def test_the_dispatch_queue_and_its_blocked_reasons(anonymous, operator, enroll):
    vehicle = enroll()
    before = anonymous.get("/metrics").text
    vehicle.publish(topics.Kind.STATUS, {"mode": "SERVICE", "estop": False, "errors": []})
    wait_until(lambda: operator.get(f"/api/v1/vehicles/{vehicle.vehicle_id}").json()["health"]["mode"] == "SERVICE")
    operator.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "held",
                                            "waypoints": [{"lat": 1, "lon": 2}]})
    operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-stop", json={"reason": "metrics"})
    after = anonymous.get("/metrics").text
    assert "# TYPE fleet_dispatch_queue_depth gauge" in after and "# TYPE fleet_dispatch_blocked gauge" in after
    assert sample(after, "fleet_dispatch_blocked", reason="emergency_stop") - \
        sample(before, "fleet_dispatch_blocked", reason="emergency_stop") == 1, "the stop outranks the mode"
    assert sample(after, "fleet_dispatch_queue_depth") - sample(before, "fleet_dispatch_queue_depth") == 1
    assert sample(after, "fleet_emergency_stops_active", scope="vehicle") - \
        sample(before, "fleet_emergency_stops_active", scope="vehicle") == 1
    assert sample(after, "fleet_emergency_commands_unacknowledged", command="stop") >= 1
