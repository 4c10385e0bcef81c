"""Operator authentication: login, JWT expiry and tampering, refresh rotation and reuse, logout, throttling."""
from __future__ import annotations

import base64
import json
import time

import jwt

from tests.api.conftest import ApiClient


def test_admin_logs_in_and_sees_who_they_are(admin):
    me = admin.get("/api/v1/auth/me")
    assert me.status_code == 200
    assert me.json()["username"] == "admin"
    assert me.json()["role"] == "admin"
    assert admin.tokens["token_type"] == "Bearer"
    assert admin.tokens["expires_in"] == 600


def test_wrong_password_is_401_with_a_json_error(anonymous, admin_password):
    response = anonymous.post("/api/v1/auth/login", json={"username": "admin", "password": "nope"})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert "password" not in response.text.lower().replace("invalid username or password", "")


def test_unknown_user_gets_the_same_answer_as_a_wrong_password(anonymous):
    response = anonymous.post("/api/v1/auth/login", json={"username": "nobody-here", "password": "x"})
    assert response.status_code == 401
    assert response.json()["message"] == "invalid username or password"


def test_no_token_and_a_garbage_token_are_refused(anonymous):
    assert anonymous.get("/api/v1/auth/me").status_code == 401
    response = anonymous.get("/api/v1/auth/me", headers={"Authorization": "Bearer not.a.jwt"})
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


def test_a_tampered_token_is_refused(admin):
    header, payload, signature = admin.tokens["access_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "admin"
    claims["sub"] = "999999"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    response = admin.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {header}.{forged_payload}.{signature}"})
    assert response.status_code == 401


def test_a_token_signed_with_another_key_or_alg_none_is_refused(admin):
    claims = jwt.decode(admin.tokens["access_token"], options={"verify_signature": False})
    for token in (jwt.encode(claims, "another-key-of-sufficient-length-123456", algorithm="HS256"),
                  jwt.encode(claims, None, algorithm="none")):
        response = admin.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401


def test_an_expired_token_is_refused(admin, stack):
    claims = jwt.decode(admin.tokens["access_token"], options={"verify_signature": False})
    claims["exp"] = int(time.time()) - 5
    expired = jwt.encode(claims, stack.secrets["FLEET_JWT_SECRET"], algorithm="HS256")
    response = admin.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401
    assert response.json()["code"] == "token_expired"


def test_refresh_rotates_and_reuse_revokes_the_whole_session(api_url, admin_password):
    client = ApiClient(api_url).login("admin", admin_password)
    first_refresh = client.tokens["refresh_token"]
    rotated = client.post("/api/v1/auth/refresh", json={"refresh_token": first_refresh})
    assert rotated.status_code == 200
    second = rotated.json()
    assert second["refresh_token"] != first_refresh

    replay = client.post("/api/v1/auth/refresh", json={"refresh_token": first_refresh})
    assert replay.status_code == 401
    assert replay.json()["code"] == "refresh_token_reused"
    # every token of that session is dead now, including the legitimately rotated one
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}).status_code == 401
    response = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {second['access_token']}"})
    assert response.status_code == 401


def test_logout_ends_the_session_at_once(api_url, admin_password):
    client = ApiClient(api_url).login("admin", admin_password)
    assert client.post("/api/v1/auth/logout").status_code == 204
    assert client.get("/api/v1/auth/me").status_code == 401
    refresh = client.post("/api/v1/auth/refresh", json={"refresh_token": client.tokens["refresh_token"]})
    assert refresh.status_code == 401


def test_repeated_failed_logins_are_throttled(make_user, anonymous):
    user = make_user("viewer")
    statuses = [anonymous.post("/api/v1/auth/login", json={"username": user.username, "password": "wrong"}).status_code
                for _ in range(6)]
    assert statuses[:5] == [401] * 5
    assert statuses[5] == 429
    throttled = anonymous.post("/api/v1/auth/login", json={"username": user.username, "password": user.password})
    assert throttled.status_code == 429, "the right password does not bypass the throttle"
    assert int(throttled.headers["Retry-After"]) > 0


def test_a_deactivated_user_is_locked_out_immediately(admin, make_user):
    user = make_user("operator")
    assert user.get("/api/v1/auth/me").status_code == 200
    assert admin.patch(f"/api/v1/users/{user.user_id}", json={"active": False}).status_code == 200
    assert user.get("/api/v1/auth/me").status_code == 401
