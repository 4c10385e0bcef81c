"""The OAuth2 token endpoint (api/tokens.py, RFC 6749): form-encoded ``POST /api/v1/auth/token`` issues the same
tokens as the JSON login, answers errors in §5.2's shape, shares the login throttle, and is wired into the OpenAPI
document so Swagger UI's "Authorize" button (and any OAuth2 client) can use it."""
from __future__ import annotations

import jwt

TOKEN = "/api/v1/auth/token"


def grant(client, **form):
    return client.post(TOKEN, data=form)


def oauth_error(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and body["code"] == error and body["error_description"] == body["message"]
    assert response.headers["Cache-Control"] == "no-store" and response.headers["Pragma"] == "no-cache"
    return body


def test_the_password_grant_issues_the_same_tokens_as_the_login(anonymous, make_user):
    user = make_user("operator")
    response = grant(anonymous, grant_type="password", username=user.username, password=user.password)
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store" and response.headers["Pragma"] == "no-cache"
    tokens = response.json()
    assert set(tokens) == set(user.tokens) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert (tokens["token_type"], tokens["expires_in"]) == ("Bearer", user.tokens["expires_in"])
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert (claims["name"], claims["role"]) == (user.username, "operator")
    me = anonymous.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200 and me.json()["username"] == user.username
    # Its refresh token is an ordinary one: the JSON refresh takes it, once.
    assert anonymous.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 200
    # Client credentials and unknown parameters are ignored (public clients; RFC 6749 §3.2).
    again = grant(anonymous, grant_type="password", username=user.username, password=user.password,
                  client_id="swagger-ui", client_secret="", scope="", colour="red")
    assert again.status_code == 200, again.text


def test_the_refresh_grant_rotates_like_the_json_refresh(anonymous, make_user):
    user = make_user("viewer")
    first = grant(anonymous, grant_type="password", username=user.username, password=user.password).json()
    second = grant(anonymous, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert second.status_code == 200, second.text
    assert second.json()["refresh_token"] != first["refresh_token"]
    body = oauth_error(grant(anonymous, grant_type="refresh_token", refresh_token=first["refresh_token"]), 400,
                       "invalid_grant")
    assert "already used" in body["message"]
    stale = anonymous.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {second.json()['access_token']}"})
    assert stale.status_code == 401, "reuse revoked the whole session, as with the JSON refresh"


def test_errors_have_the_rfc_6749_shape(anonymous, make_user):
    user = make_user("viewer")
    body = oauth_error(grant(anonymous, grant_type="password", username=user.username, password="wrong"), 400,
                       "invalid_grant")
    assert body["message"] == "invalid username or password"
    oauth_error(grant(anonymous, grant_type="password", username="nobody-here", password="x"), 400, "invalid_grant")
    oauth_error(grant(anonymous, grant_type="client_credentials"), 400, "unsupported_grant_type")
    oauth_error(grant(anonymous, username=user.username, password=user.password), 400, "invalid_request")
    missing = oauth_error(grant(anonymous, grant_type="password", username=user.username), 400, "invalid_request")
    assert "password" in missing["message"]
    oauth_error(grant(anonymous, grant_type="password", username=user.username, password=user.password,
                      scope="admin"), 400, "invalid_scope")
    repeated = anonymous.post(TOKEN, data=[("grant_type", "password"), ("username", user.username),
                                           ("username", "admin"), ("password", user.password)])
    assert "username" in oauth_error(repeated, 400, "invalid_request")["message"]
    as_json = anonymous.post(TOKEN, json={"grant_type": "password", "username": user.username,
                                          "password": user.password})
    assert "x-www-form-urlencoded" in oauth_error(as_json, 400, "invalid_request")["message"]
    assert anonymous.get(TOKEN).status_code == 405


def test_failures_on_either_endpoint_count_towards_one_throttle(anonymous, make_user):
    user = make_user("viewer")
    wrong = {"username": user.username, "password": "wrong"}
    statuses = [grant(anonymous, grant_type="password", **wrong).status_code for _ in range(3)]
    statuses += [anonymous.post("/api/v1/auth/login", json=wrong).status_code for _ in range(2)]
    assert statuses == [400, 400, 400, 401, 401]
    throttled = grant(anonymous, grant_type="password", username=user.username, password=user.password)
    body = oauth_error(throttled, 429, "invalid_grant")
    assert int(throttled.headers["Retry-After"]) > 0 and body["details"]["retry_after_s"] > 0
    assert anonymous.post("/api/v1/auth/login", json={"username": user.username, "password": user.password}
                          ).status_code == 429


def test_the_openapi_document_offers_the_password_flow(anonymous):
    spec = anonymous.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["oauth2"]
    assert scheme["type"] == "oauth2"
    assert scheme["flows"]["password"] == {"tokenUrl": TOKEN, "refreshUrl": TOKEN, "scopes": {}}
    assert spec["paths"]["/api/v1/auth/me"]["get"]["security"] == [{"bearerAuth": []}, {"oauth2": []}]
    operation = spec["paths"][TOKEN]["post"]
    form = operation["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert form == {"$ref": "#/components/schemas/OAuthTokenRequest"}
    assert {"grant_type", "username", "password"} <= set(spec["components"]["schemas"]["OAuthTokenRequest"]
                                                         ["required"])
    assert {"200", "400", "429"} <= set(operation["responses"]) and "security" not in operation
