"""Admins manage users and fleets; operators and viewers see only their own fleets."""
from __future__ import annotations

from tests.api.conftest import unique


def test_admin_creates_a_fleet_and_a_user_in_it(admin, make_user, fleet):
    operator = make_user("operator", [fleet])
    me = operator.get("/api/v1/auth/me").json()
    assert me["role"] == "operator"
    assert me["fleets"] == [fleet]


def test_non_admins_cannot_manage_users_or_fleets(make_user, fleet):
    for role in ("operator", "viewer"):
        client = make_user(role, [fleet])
        assert client.get("/api/v1/users").status_code == 403
        assert client.post("/api/v1/fleets", json={"id": unique("f"), "name": "x"}).status_code == 403
        response = client.post("/api/v1/users", json={"username": unique("x"), "password": "p" * 12,
                                                       "role": "admin"})
        assert response.status_code == 403, "role escalation must be impossible"


def test_operators_see_only_their_fleets(admin, make_user, fleet):
    other_fleet = unique("fleet")
    assert admin.post("/api/v1/fleets", json={"id": other_fleet, "name": "Other"}).status_code == 201
    operator = make_user("operator", [fleet])
    visible = {f["id"] for f in operator.get("/api/v1/fleets?per_page=500").json()["items"]}
    assert visible == {fleet}
    assert operator.get(f"/api/v1/fleets/{other_fleet}").status_code == 404
    assert operator.get(f"/api/v1/fleets/{fleet}").status_code == 200


def test_usernames_are_unique_and_passwords_long(admin):
    name = unique("dup")
    body = {"username": name, "password": "long enough password", "role": "viewer"}
    assert admin.post("/api/v1/users", json=body).status_code == 201
    assert admin.post("/api/v1/users", json=body).status_code == 409
    short = admin.post("/api/v1/users", json={**body, "username": unique("short"), "password": "short"})
    assert short.status_code == 422


def test_a_password_change_ends_the_users_sessions(admin, make_user, api_url):
    user = make_user("viewer")
    response = admin.patch(f"/api/v1/users/{user.user_id}", json={"password": "a brand new password"})
    assert response.status_code == 200
    assert user.get("/api/v1/auth/me").status_code == 401


def test_the_last_admin_cannot_be_demoted_or_deleted(admin):
    me = admin.get("/api/v1/auth/me").json()
    response = admin.delete(f"/api/v1/users/{me['id']}")
    assert response.status_code == 409


def test_role_changes_apply_to_existing_tokens(admin, make_user, fleet):
    user = make_user("viewer", [fleet])
    assert user.post("/api/v1/fleets", json={"id": unique("f"), "name": "x"}).status_code == 403
    assert admin.patch(f"/api/v1/users/{user.user_id}", json={"role": "admin"}).status_code == 200
    assert user.post("/api/v1/fleets", json={"id": unique("f"), "name": "x"}).status_code == 201


def test_unknown_fleets_in_a_membership_are_rejected(admin):
    response = admin.post("/api/v1/users", json={"username": unique("u"), "password": "p" * 12,
                                                  "role": "viewer", "fleets": ["no-such-fleet"]})
    assert response.status_code == 422
    assert response.json()["details"]["fleets"] == ["no-such-fleet"]
