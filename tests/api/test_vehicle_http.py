"""The vehicle HTTP fallback (api/vehicle_gateway.py, docs/PROTOCOL.md → HTTP fallback), over real HTTP against the
embedded stack: the token exchange and its separation from operator tokens, and inbound messages going through the
same SQL ingest as MQTT (stored, deduplicated, dead-lettered with a reason, only ever as the token's vehicle)."""
from __future__ import annotations

import threading
import time

import jwt
import psycopg2
import pytest
import requests

from tests.support.database import rows
from tests.support.vehicle import new_msg_id
from tests.support.waiting import wait_until

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


# -- commands -------------------------------------------------------------------------------------------------
def commands_of(vehicle: HttpVehicle, wait: int = 0) -> list[dict]:
    response = vehicle.get("commands", params={"wait": wait})
    assert response.status_code == 200, response.text
    return response.json()["commands"]


def set_config(operator, vehicle_id: str, config: dict) -> str:
    response = operator.put(f"/api/v1/vehicles/{vehicle_id}/config", json={"config": config})
    assert response.status_code == 200, response.text
    return response.json()["command"]["msg_id"]


def test_commands_come_in_order_and_are_acknowledged_once(http_vehicle, operator):
    vehicle = http_vehicle()
    assert commands_of(vehicle) == []
    first = set_config(operator, vehicle.vehicle_id, {"max_speed_mps": 1.0})
    second = set_config(operator, vehicle.vehicle_id, {"max_speed_mps": 2.0})
    pending = commands_of(vehicle)
    assert [(c["msg_id"], c["type"], c["data"]["version"]) for c in pending] == [
        (first, "config.update", 1), (second, "config.update", 2)]
    assert set(pending[0]) == {"v", "msg_id", "ts", "type", "data"}   # the envelope as published over MQTT

    ack = vehicle.post(f"commands/{first}/ack")
    assert ack.status_code == 200 and ack.json()["acked_now"] is True and ack.json()["acked_via"] == "http"
    again = vehicle.post(f"commands/{first}/ack")
    assert again.status_code == 200 and again.json()["acked_now"] is False
    assert again.json()["acked_at"] == ack.json()["acked_at"]
    assert [c["msg_id"] for c in commands_of(vehicle)] == [second]
    assert vehicle.post("commands/no-such-command/ack").status_code == 404


def test_another_vehicles_commands_are_neither_seen_nor_acknowledged(http_vehicle, operator):
    vehicle, other = http_vehicle(), http_vehicle()
    msg_id = set_config(operator, other.vehicle_id, {"a": 1})
    assert commands_of(vehicle) == []
    assert vehicle.post(f"commands/{msg_id}/ack").status_code == 404
    assert [c["msg_id"] for c in commands_of(other)] == [msg_id]


def test_wait_is_bounded(http_vehicle):
    vehicle = http_vehicle()
    response = vehicle.get("commands", params={"wait": 31})
    assert response.status_code == 422, response.text
    assert "wait" in str(response.json()["details"])


def test_long_poll_returns_when_a_command_is_created(http_vehicle, operator, stack):
    vehicle = http_vehicle()
    answers: list[list[dict]] = []
    poller = threading.Thread(target=lambda: answers.append(commands_of(vehicle, wait=30)))
    poller.start()
    wait_until(lambda: rows(stack.database_url, "SELECT 1 FROM vehicle_http_polls WHERE vehicle_id = %s",
                            (vehicle.vehicle_id,)), message="the poll never started")
    msg_id = set_config(operator, vehicle.vehicle_id, {"x": 1})
    # far less than the 30 s the poll may wait: only a wake-up returns it this early
    poller.join(timeout=15)
    assert not poller.is_alive(), "the long-poll did not return when the command was created"
    assert [c["msg_id"] for c in answers[0]] == [msg_id]


def test_a_vehicle_on_http_gets_its_mission_and_confirms_it_over_http(http_vehicle, operator, stack):
    vehicle = http_vehicle()
    assert commands_of(vehicle) == []                       # it polls: the outbox delivers its commands
    assert vehicle.post("telemetry", json=envelope({"lat": 48.1, "lon": 11.5})).json()["rejected"] == []
    wait_until(lambda: operator.get(f"/api/v1/vehicles/{vehicle.vehicle_id}").json()["presence"]["online"],
               message="telemetry over HTTP never made the vehicle online")
    response = operator.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "over http",
                                                       "waypoints": [{"lat": 48.1, "lon": 11.5}]})
    assert response.status_code == 201, response.text
    mission = response.json()
    assert mission["state"] == "dispatched"                 # not requeued for want of an MQTT subscriber
    dispatch = [c for c in commands_of(vehicle) if c["type"] == "mission.dispatch"]
    assert [c["data"]["mission_id"] for c in dispatch] == [mission["id"]]
    event = envelope({"mission_id": mission["id"], "event": "accepted"})
    assert vehicle.post("mission", json=event).json() == {"rejected": [], "parked": False}
    assert operator.get(f"/api/v1/missions/{mission['id']}").json()["state"] == "accepted"
    # the accepted event acknowledged the dispatch: handed out no more, acknowledged once, over http
    assert [c for c in commands_of(vehicle) if c["type"] == "mission.dispatch"] == []
    acked = rows(stack.database_url, "SELECT acked_via FROM vehicle_commands WHERE msg_id = %s",
                 (dispatch[0]["msg_id"],))
    assert acked == [{"acked_via": "http"}]
    assert vehicle.post(f"commands/{dispatch[0]['msg_id']}/ack").json()["acked_now"] is False


def test_a_confirmation_over_mqtt_and_an_ack_over_http_count_once(enroll, operator, api_url, stack):
    mqtt_vehicle = enroll()
    vehicle = HttpVehicle(api_url, mqtt_vehicle.vehicle_id, mqtt_vehicle.secret).login()
    response = operator.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "over mqtt",
                                                       "waypoints": [{"lat": 48.1, "lon": 11.5}]})
    mission = response.json()
    command = mqtt_vehicle.wait_for_command("mission.dispatch")
    assert [c["msg_id"] for c in commands_of(vehicle)] == [command["msg_id"]]   # the same command, both ways
    mqtt_vehicle.mission_event(mission["id"], "accepted")
    wait_until(lambda: operator.get(f"/api/v1/missions/{mission['id']}").json()["state"] == "accepted")
    assert commands_of(vehicle) == []
    ack = vehicle.post(f"commands/{command['msg_id']}/ack").json()
    assert (ack["acked_now"], ack["acked_via"]) == (False, "mqtt")


def test_status_over_http_confirms_a_stop_and_a_configuration(http_vehicle, operator, stack):
    vehicle = http_vehicle()
    assert commands_of(vehicle) == []
    assert vehicle.post("telemetry", json=envelope({"lat": 48.1, "lon": 11.5})).json()["rejected"] == []
    wait_until(lambda: operator.get(f"/api/v1/vehicles/{vehicle.vehicle_id}").json()["presence"]["online"],
               message="telemetry over HTTP never made the vehicle online")
    config_msg_id = set_config(operator, vehicle.vehicle_id, {"max_speed_mps": 1.0})
    response = operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-stop", json={"reason": "test"})
    assert response.status_code == 200 and response.json()["delivered"] is True, response.text
    stop_id = response.json()["stop"]["id"]
    pending = commands_of(vehicle)
    assert [c["type"] for c in pending][:2] == ["config.update", "emergency.stop"]
    # one status confirms both, as over MQTT: the stop (estop true) and the configuration (config_version 1)
    report = envelope({"mode": "ESTOP", "estop": True, "errors": [], "config_version": 1,
                       "config": {"max_speed_mps": 1.0}})
    assert vehicle.post("status", json=report).json() == {"rejected": [], "parked": False}
    assert commands_of(vehicle) == []
    acked = rows(stack.database_url, "SELECT type, acked_via FROM vehicle_commands WHERE vehicle_id = %s "
                 "AND msg_id = ANY(%s) ORDER BY id", (vehicle.vehicle_id, [c["msg_id"] for c in pending]))
    assert {(r["type"], r["acked_via"]) for r in acked} == {("config.update", "http"), ("emergency.stop", "http")}
    assert config_msg_id in [c["msg_id"] for c in pending]
    wait_until(lambda: operator.get(f"/api/v1/emergency-stops/{stop_id}").json()["acknowledged"] == 1,
               message="the status over HTTP confirms the stop")


def test_expired_and_foreign_tokens_are_refused(http_vehicle, stack):
    """Signed with the api's own key, so only the claims decide: an expired vehicle token, and one without the
    vehicle audience (an operator token's shape) carrying the vehicle's id and credential."""
    vehicle = http_vehicle()
    claims = jwt.decode(vehicle.session.headers["Authorization"].split()[1], options={"verify_signature": False})
    secret = stack.secrets["FLEET_JWT_SECRET"]
    now = int(time.time())
    expired = jwt.encode({**claims, "iat": now - 100, "nbf": now - 100, "exp": now - 10}, secret, algorithm="HS256")
    no_audience = jwt.encode({k: v for k, v in claims.items() if k != "aud"}, secret, algorithm="HS256")
    other_role = jwt.encode({**claims, "role": "operator"}, secret, algorithm="HS256")
    for token, code in ((expired, "token_expired"), (no_audience, "invalid_token"), (other_role, "invalid_token")):
        response = requests.get(vehicle.api_url + "/api/v1/vehicle/config",
                                headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert (response.status_code, response.json()["code"]) == (401, code)


def test_waiting_long_polls_hold_no_request_thread(http_vehicle, operator, stack):
    """More polls wait at once than the api has threads (API_THREADS, 16): each still reaches its view (its poll is
    recorded), the api still answers, and each returns with its own command. If a poll held a thread, the 17th
    would queue behind the others for their whole 30 s."""
    vehicles = [http_vehicle() for _ in range(20)]
    answers: dict[str, list[dict]] = {}
    pollers = [threading.Thread(target=lambda v=v: answers.__setitem__(v.vehicle_id, commands_of(v, wait=30)))
               for v in vehicles]
    for poller in pollers:
        poller.start()
    ids = [v.vehicle_id for v in vehicles]
    wait_until(lambda: len(rows(stack.database_url, "SELECT 1 FROM vehicle_http_polls WHERE vehicle_id = ANY(%s)",
                                (ids,))) == len(ids), timeout=15, message="some polls never reached their view")
    assert operator.get("/api/v1/vehicles", timeout=10).status_code == 200
    sent = {v.vehicle_id: set_config(operator, v.vehicle_id, {"n": 1}) for v in vehicles}
    for poller in pollers:
        poller.join(timeout=15)
    assert not any(p.is_alive() for p in pollers)
    assert {vid: [c["msg_id"] for c in cmds] for vid, cmds in answers.items()} == \
        {vid: [msg_id] for vid, msg_id in sent.items()}


def test_a_message_the_database_cannot_apply_at_once_is_parked_and_applied_later(http_vehicle, stack):
    vehicle = http_vehicle()
    assert vehicle.post("telemetry", json=envelope({"lat": 1.0, "lon": 2.0})).json()["rejected"] == []
    holder = psycopg2.connect(stack.database_url)   # an operator's transaction holds the vehicle's latest state
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT 1 FROM vehicle_state WHERE vehicle_id = %s FOR UPDATE", (vehicle.vehicle_id,))
        point = envelope({"lat": 3.0, "lon": 4.0}, seq=2)
        assert vehicle.post("telemetry", json=point).json() == {"rejected": [], "parked": True}
    finally:
        holder.rollback()
        holder.close()
    wait_until(lambda: rows(stack.database_url, "SELECT 1 FROM telemetry WHERE vehicle_id = %s AND msg_id = %s",
                            (vehicle.vehicle_id, point["msg_id"])), timeout=30,
               message="the worker never applied the parked message")


def test_a_new_registration_ends_the_old_secrets_token(enroll, operator, api_url, stack):
    registered = enroll(connect=False)
    vehicle = HttpVehicle(api_url, registered.vehicle_id, registered.secret).login()
    response = operator.post(f"/api/v1/vehicles/{registered.vehicle_id}/enrollment", json={})
    assert response.status_code == 201, response.text
    new_secret = registered.register(response.json()["token"])
    response = vehicle.get("config")
    assert (response.status_code, response.json()["code"]) == (401, "credentials_revoked")
    assert HttpVehicle(api_url, registered.vehicle_id, new_secret).login().get("config").status_code == 200
