"""Alarms as operators meet them, against the running stack: the worker raises them from what vehicles do, the
console's stream carries them, operators acknowledge them, and webhooks receive every change, signed, retried
with back-off and logged. The rules themselves are tested in tests/sql/test_alarms.py.

The test stack evaluates the rules every 0.5 s and retries webhooks after 0.2 s, doubling (tests/conftest.py)."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.sse import EventStream
from tests.support.waiting import wait_until


@pytest.fixture
def quick_offline(admin):
    """Vehicles count as offline after 1 s (restored afterwards: the setting is the stack's)."""
    before = admin.get("/api/v1/alarms/settings").json()
    response = admin.patch("/api/v1/alarms/settings", json={"offline_after_s": 1})
    assert response.status_code == 200, response.text
    yield
    admin.patch("/api/v1/alarms/settings", json={"offline_after_s": before["offline_after_s"]})


def _alarms(client, **params) -> list[dict]:
    response = client.get("/api/v1/alarms", params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_an_offline_vehicle_raises_an_alarm_that_an_operator_acknowledges(api_url, operator, enroll, make_user,
                                                                          admin, quick_offline):
    vehicle = enroll()
    viewer = make_user("viewer", [operator.fleet])
    other_fleet = admin.post("/api/v1/fleets", json={"id": f"{operator.fleet}-o", "name": "other"}).json()["id"]
    outsider = make_user("operator", [other_fleet])
    with EventStream(api_url, operator.tokens["access_token"]) as stream:
        stream.wait_for(lambda e: e.event == "snapshot")
        vehicle.drop()
        raised = stream.wait_for(lambda e: e.event == "alarm" and e.json()["subject"] == vehicle.vehicle_id,
                                 timeout=20, what="the offline alarm")
    alarm = raised.json()
    assert (alarm["kind"], alarm["state"], alarm["count"], alarm["fleet_id"]) == (
        "vehicle_offline", "active", 1, operator.fleet)
    listed = _alarms(operator, vehicle_id=vehicle.vehicle_id, state="open")
    assert [a["id"] for a in listed] == [alarm["id"]]
    assert _alarms(outsider, vehicle_id=vehicle.vehicle_id) == []
    assert outsider.get(f"/api/v1/alarms/{alarm['id']}").status_code == 404
    assert outsider.post(f"/api/v1/alarms/{alarm['id']}/acknowledge", json={}).status_code == 404
    assert viewer.post(f"/api/v1/alarms/{alarm['id']}/acknowledge", json={}).status_code == 403

    response = operator.post(f"/api/v1/alarms/{alarm['id']}/acknowledge", json={"comment": "driving there"})
    assert response.status_code == 200, response.text
    acked = response.json()
    assert (acked["state"], acked["acknowledged_by"]) == ("acknowledged", operator.username)
    assert operator.post(f"/api/v1/alarms/{alarm['id']}/acknowledge", json={}).json()["state"] == "acknowledged"

    vehicle.connect(vehicle.secret)   # back online: over and acknowledged, so cleared
    cleared = wait_until(lambda: operator.get(f"/api/v1/alarms/{alarm['id']}").json()["state"] == "cleared"
                         and operator.get(f"/api/v1/alarms/{alarm['id']}").json(), timeout=20)
    assert cleared["cleared_by"] == "system"
    assert [h["event"] for h in cleared["history"]] == ["raised", "acknowledged", "condition_ended", "cleared"]
    assert cleared["history"][1]["actor"] == operator.username
    assert cleared["history"][1]["detail"] == {"comment": "driving there"}
    response = operator.post(f"/api/v1/alarms/{alarm['id']}/acknowledge", json={})
    assert response.status_code == 409 and response.json()["code"] == "already_cleared"


def test_alarm_filters_and_settings_are_validated(operator, admin):
    for params in ({"state": "sleeping"}, {"severity": "loud"}, {"kind": "nope"}, {"vehicle_id": "a/b"},
                   {"mission_id": "not-a-uuid"}, {"since": "yesterday"}):
        response = operator.get("/api/v1/alarms", params=params)
        assert response.status_code in (400, 422), (params, response.text)
    assert operator.patch("/api/v1/alarms/settings", json={"offline_after_s": 5}).status_code == 403
    for body in ({"offline_after_s": 0}, {"battery_low_pct": 101}, {"unknown": 1},
                 {"battery_low_pct": 30, "battery_clear_pct": 25}):
        response = admin.patch("/api/v1/alarms/settings", json=body)
        assert response.status_code == 422, (body, response.text)
        assert set(response.json()) == {"code", "message", "details"}


class Receiver:
    """A local webhook receiver: answers 500 to the first ``failures`` deliveries, then 200; keeps every one."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append({"headers": dict(self.headers), "body": body})
                status = 500 if len(receiver.received) <= receiver.failures else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format, *args) -> None:  # noqa: A002
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/fleet"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhooks_are_signed_retried_with_back_off_and_logged(operator, admin, enroll, quick_offline):
    receiver = Receiver(failures=2)
    try:
        response = admin.post("/api/v1/alarm-webhooks", json={"url": receiver.url, "fleet_id": operator.fleet})
        assert response.status_code == 201, response.text
        webhook = response.json()
        assert webhook["secret"].startswith("whsec_")
        assert "secret" not in admin.get("/api/v1/alarm-webhooks").json()["items"][0]
        assert operator.get("/api/v1/alarm-webhooks").status_code == 403

        vehicle = enroll()
        vehicle.drop()
        deliveries = wait_until(lambda: [d for d in admin.get(
            f"/api/v1/alarm-webhooks/{webhook['id']}/deliveries").json()["items"] if d["state"] == "delivered"],
            timeout=30, message="the raised alarm was never delivered")
        [delivery] = deliveries
        assert (delivery["attempts"], delivery["last_status"], delivery["event"]) == (3, 200, "raised")
        attempts = [r for r in receiver.received if r["headers"]["X-Fleet-Delivery"] == str(delivery["id"])]
        assert len(attempts) == 3
        for attempt in attempts:
            timestamp, mac = (part.split("=", 1)[1] for part in attempt["headers"]["X-Fleet-Signature"].split(","))
            expected = hmac.new(webhook["secret"].encode(), f"{timestamp}.".encode() + attempt["body"],
                                hashlib.sha256).hexdigest()
            assert hmac.compare_digest(mac, expected)
            assert attempt["headers"]["X-Fleet-Event"] == "raised"
        body = json.loads(attempts[-1]["body"])
        assert (body["alarm"]["kind"], body["alarm"]["vehicle_id"]) == ("vehicle_offline", vehicle.vehicle_id)
        assert admin.delete(f"/api/v1/alarm-webhooks/{webhook['id']}").status_code == 204
        assert admin.get(f"/api/v1/alarm-webhooks/{webhook['id']}/deliveries").status_code == 404
    finally:
        receiver.close()


def test_a_receiver_that_never_answers_is_given_up_after_the_last_attempt(admin, operator, enroll, quick_offline):
    """The test stack gives up after 5 attempts (WEBHOOK_MAX_ATTEMPTS); a closed port refuses each at once."""
    closed = Receiver(failures=0)
    url = closed.url
    closed.close()   # nothing listens there any more
    webhook = admin.post("/api/v1/alarm-webhooks", json={"url": url, "fleet_id": operator.fleet}).json()
    vehicle = enroll()
    vehicle.drop()
    failed = wait_until(lambda: admin.get(f"/api/v1/alarm-webhooks/{webhook['id']}/deliveries",
                                          params={"state": "failed"}).json()["items"],
                        timeout=60, interval=0.5, message="the delivery was never given up")
    assert (failed[0]["attempts"], failed[0]["last_status"], failed[0]["last_error"]) == (5, None, "ConnectionError")
    admin.delete(f"/api/v1/alarm-webhooks/{webhook['id']}")
