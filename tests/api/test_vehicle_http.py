"""The vehicle HTTP fallback (api/vehicle_gateway.py, docs/PROTOCOL.md → HTTP fallback), over real HTTP against the
embedded stack: the token exchange and its separation from operator tokens, and inbound messages going through the
same SQL ingest as MQTT (stored, deduplicated, dead-lettered with a reason, only ever as the token's vehicle)."""
from __future__ import annotations

import time

import pytest
import requests

from tests.support.database import rows
from tests.support.vehicle import new_msg_id

TOKEN = "/api/v1/vehicle/token"


def envelope(data: dict, **fields) -> dict:
    return {"v": 1, "msg_id": new_msg_id(), "seq": fields.pop("seq", 1), "ts": int(time.time() * 1000),
            "data": data, **fields}


class HttpVehicle:
    """A vehicle that speaks the HTTP fallback only."""

    def __init__(self, api_url: str, vehicle_id: str, secret: str) -> None:
        self.api_url, self.vehicle_id, self.secret = api_url, vehicle_id, secret
        self.session = requests.Session()

    def get_token(self) -> requests.Response:
        return self.session.post(self.api_url + TOKEN, json={"vehicle_id": self.vehicle_id, "secret": self.secret},
                                 timeout=30)

    def login(self) -> HttpVehicle:
        response = self.get_token()
        assert response.status_code == 200, response.text
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
        return self

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.session.post(f"{self.api_url}/api/v1/vehicle/{path}", timeout=30, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(f"{self.api_url}/api/v1/vehicle/{path}", timeout=30, **kwargs)


@pytest.fixture
def http_vehicle(enroll, api_url):
    """A registered vehicle (its device secret came over MQTT registration) that then talks HTTP only."""
    def _make() -> HttpVehicle:
        mqtt_vehicle = enroll(connect=False)
        return HttpVehicle(api_url, mqtt_vehicle.vehicle_id, mqtt_vehicle.secret).login()
    return _make


# -- tokens ---------------------------------------------------------------------------------------------------
def test_token_is_issued_for_the_device_secret_only(http_vehicle, api_url):
    vehicle = http_vehicle()
    body = vehicle.get_token().json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    wrong = HttpVehicle(api_url, vehicle.vehicle_id, vehicle.secret + "x").get_token()
    assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_credentials"
    unknown = HttpVehicle(api_url, "no-such-vehicle-x", vehicle.secret).get_token()
    assert unknown.status_code == 401
    malformed = requests.post(api_url + TOKEN, json={"vehicle_id": "a/b", "secret": "s"}, timeout=30)
    assert malformed.status_code == 422


def test_operator_and_vehicle_tokens_do_not_cross(http_vehicle, operator, api_url):
    vehicle = http_vehicle()
    # an operator's token on a vehicle route
    response = operator.get("/api/v1/vehicle/config")
    assert response.status_code == 401 and response.json()["code"] == "invalid_token"
    response = operator.post("/api/v1/vehicle/telemetry", json=envelope({"lat": 1.0, "lon": 2.0}))
    assert response.status_code == 401
    # a vehicle's token on operator routes
    vehicle_header = {"Authorization": vehicle.session.headers["Authorization"]}
    for path in ("/api/v1/auth/me", "/api/v1/vehicles", f"/api/v1/vehicles/{vehicle.vehicle_id}"):
        response = requests.get(api_url + path, headers=vehicle_header, timeout=30)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["code"] == "invalid_token"
    # the vehicle's own route works with its own token
    assert vehicle.get("config").status_code == 200


def test_revoked_vehicle_gets_no_token_and_its_token_stops_working(http_vehicle, operator):
    vehicle = http_vehicle()
    assert operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/revoke", json={}).status_code == 200
    response = vehicle.get("config")
    assert response.status_code == 401 and response.json()["code"] == "credentials_revoked"
    assert vehicle.post("telemetry", json=envelope({"lat": 1.0, "lon": 2.0})).status_code == 401
    assert vehicle.get_token().status_code == 401


def test_decommissioned_vehicle_gets_no_token(http_vehicle, operator):
    vehicle = http_vehicle()
    assert operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/decommission", json={}).status_code == 200
    assert vehicle.get_token().status_code == 401
    assert vehicle.get("config").status_code == 401


def test_wrong_secrets_are_throttled(http_vehicle, api_url):
    vehicle = http_vehicle()
    wrong = HttpVehicle(api_url, vehicle.vehicle_id, "not-the-secret")
    statuses = [wrong.get_token().status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    # the right secret from the same address is throttled too until the window passes: a guesser learns nothing
    throttled = vehicle.get_token()
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1


# -- inbound --------------------------------------------------------------------------------------------------
def test_telemetry_single_and_batch_land_in_the_telemetry_table(http_vehicle, stack):
    vehicle = http_vehicle()
    single = envelope({"lat": 48.1, "lon": 11.5, "speed_mps": 1.2})
    response = vehicle.post("telemetry", json=single)
    assert response.status_code == 202, response.text
    assert response.json() == {"rejected": [], "parked": False}
    batch = [envelope({"lat": 48.2, "lon": 11.6}, seq=2), envelope({"lat": 48.3, "lon": 11.7}, seq=3)]
    response = vehicle.post("telemetry", json={"v": 1, "batch": batch})
    assert response.status_code == 202 and response.json()["rejected"] == []
    # a redelivery is stored once, as over MQTT
    assert vehicle.post("telemetry", json=single).json() == {"rejected": [], "parked": False}
    stored = rows(stack.database_url, "SELECT msg_id, lat FROM telemetry WHERE vehicle_id = %s ORDER BY seq",
                  (vehicle.vehicle_id,))
    assert [(r["msg_id"], r["lat"]) for r in stored] == [(single["msg_id"], 48.1), (batch[0]["msg_id"], 48.2),
                                                         (batch[1]["msg_id"], 48.3)]


def test_bad_payload_is_dead_lettered_with_its_reason(http_vehicle, stack):
    vehicle = http_vehicle()
    response = vehicle.post("telemetry", json=envelope({"lon": 11.5}))
    assert response.status_code == 202
    assert response.json() == {"rejected": [{"reason": "missing_field", "detail": "data.lat"}], "parked": False}
    response = vehicle.post("status", data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 202 and [r["reason"] for r in response.json()["rejected"]] == ["not_json"]
    # one bad item of a batch: the others are stored
    good = envelope({"lat": 1.0, "lon": 2.0})
    response = vehicle.post("telemetry", json={"v": 1, "batch": [good, envelope({"lat": 91.0, "lon": 2.0})]})
    assert [r["reason"] for r in response.json()["rejected"]] == ["invalid_value"]
    dead = rows(stack.database_url, "SELECT topic, reason FROM rejected_messages WHERE clientid = %s ORDER BY id",
                (vehicle.vehicle_id,))
    vid = vehicle.vehicle_id
    assert [(r["topic"], r["reason"]) for r in dead] == [
        (f"fleet/v1/{vid}/telemetry", "missing_field"), (f"fleet/v1/{vid}/status", "not_json"),
        (f"fleet/v1/{vid}/telemetry", "invalid_value")]
    assert len(rows(stack.database_url, "SELECT 1 FROM telemetry WHERE vehicle_id = %s", (vid,))) == 1


def test_a_vehicle_can_only_write_as_itself(http_vehicle, stack):
    vehicle, other = http_vehicle(), http_vehicle()
    response = vehicle.post("telemetry", json=envelope({"lat": 1.0, "lon": 2.0, "vehicle_id": other.vehicle_id}))
    assert [r["reason"] for r in response.json()["rejected"]] == ["vehicle_id_mismatch"]
    assert rows(stack.database_url, "SELECT 1 FROM telemetry WHERE vehicle_id = ANY(%s)",
                ([vehicle.vehicle_id, other.vehicle_id],)) == []
    # there is no way to name another vehicle: the routes take no vehicle id, and a path with one does not exist
    assert vehicle.post(f"telemetry/{other.vehicle_id}", json=envelope({"lat": 1.0, "lon": 2.0})).status_code == 404


def test_status_and_mission_events_go_through_the_ingest(http_vehicle, stack):
    vehicle = http_vehicle()
    status = envelope({"mode": "AUTO", "battery_pct": 50.0, "errors": []})
    assert vehicle.post("status", json=status).json() == {"rejected": [], "parked": False}
    stored = rows(stack.database_url, "SELECT msg_id, mode FROM vehicle_status WHERE vehicle_id = %s",
                  (vehicle.vehicle_id,))
    assert stored == [{"msg_id": status["msg_id"], "mode": "AUTO"}]
    event = envelope({"mission_id": "5b0e7f4c-3a8e-4b71-9a57-2f1f0c6d9e21", "event": "accepted"})
    assert [r["reason"] for r in vehicle.post("mission", json=event).json()["rejected"]] == ["unknown_mission"]


def test_body_limits(http_vehicle, stack):
    vehicle = http_vehicle()
    # beyond the ingest's 256 KiB: dead-lettered `oversize`, as over MQTT
    big = envelope({"lat": 1.0, "lon": 2.0, "pad": "x" * (300 * 1024)})
    assert [r["reason"] for r in vehicle.post("telemetry", json=big).json()["rejected"]] == ["oversize"]
    # beyond the api's request limit (1 MiB, the broker's packet limit): refused before it is read
    response = vehicle.post("telemetry", data=b"{" + b" " * (1024 * 1024 + 1) + b"}",
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"


def test_desired_config(http_vehicle, operator):
    vehicle = http_vehicle()
    response = operator.put(f"/api/v1/vehicles/{vehicle.vehicle_id}/config", json={"config": {"max_speed_mps": 1.5}})
    assert response.status_code == 200, response.text
    body = vehicle.get("config").json()
    assert body == {"vehicle_id": vehicle.vehicle_id, "version": 1, "config": {"max_speed_mps": 1.5},
                    "reported_version": None}
