"""Fixtures for the operator API: a logged-in HTTP client per role, against the api the stack runs."""
from __future__ import annotations

import itertools
import os
import uuid

import pytest
import requests

_names = itertools.count(1)


class ApiClient:
    """requests, with the base URL and (after ``login``) the bearer token filled in."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.tokens: dict | None = None

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, f"{self.base_url}{path}", **kwargs)

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs):
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs):
        return self.request("PATCH", path, **kwargs)

    def put(self, path: str, **kwargs):
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs):
        return self.request("DELETE", path, **kwargs)

    def login(self, username: str, password: str) -> ApiClient:
        response = self.post("/api/v1/auth/login", json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        self.tokens = response.json()
        self.session.headers["Authorization"] = f"Bearer {self.tokens['access_token']}"
        return self


@pytest.fixture(scope="session")
def api_url(stack) -> str:
    if "api" not in {c.name for c in stack.started}:
        pytest.skip(f"the api is not running (FLEET_STACK_COMPONENTS={os.environ.get('FLEET_STACK_COMPONENTS')})")
    return stack.url("api")


@pytest.fixture
def anonymous(api_url) -> ApiClient:
    return ApiClient(api_url)


@pytest.fixture(scope="session")
def admin_password(stack) -> str:
    return stack.secrets["FLEET_ADMIN_PASSWORD"]


@pytest.fixture
def admin(api_url, admin_password) -> ApiClient:
    return ApiClient(api_url).login("admin", admin_password)


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_names)}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def fleet(admin) -> str:
    """A new fleet for this test."""
    fleet_id = unique("fleet")
    response = admin.post("/api/v1/fleets", json={"id": fleet_id, "name": f"Fleet {fleet_id}"})
    assert response.status_code == 201, response.text
    return fleet_id


@pytest.fixture
def make_user(admin, api_url):
    """Create an operator account with a role and fleets; returns a logged-in client."""
    def _make(role: str, fleets: list[str] | tuple = ()) -> ApiClient:
        username = unique(role)
        password = "correct horse battery " + uuid.uuid4().hex[:8]
        response = admin.post("/api/v1/users", json={"username": username, "password": password, "role": role,
                                                      "fleets": list(fleets)})
        assert response.status_code == 201, response.text
        client = ApiClient(api_url).login(username, password)
        client.username, client.password, client.user_id = username, password, response.json()["id"]
        return client
    return _make
