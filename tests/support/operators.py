"""The operator's side in tests: an HTTP client for the api, and unique names so tests never collide."""
from __future__ import annotations

import itertools
import os
import time
import uuid

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
        for _ in range(20):  # 503 login_busy: too many logins at once (api/throttle.py); a client waits and retries
            response = self.post("/api/v1/auth/login", json={"username": username, "password": password})
            if response.status_code != 503:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")))
        assert response.status_code == 200, response.text
        self.tokens = response.json()
        self.session.headers["Authorization"] = f"Bearer {self.tokens['access_token']}"
        return self


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_names)}-{uuid.uuid4().hex[:6]}"
