"""A small operator client for the fleet api (JWT login, JSON errors), used for enrollment and scenarios."""
from __future__ import annotations

import threading
from typing import Any

import requests


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, response: requests.Response) -> None:
        code = None
        try:
            body = response.json()
            detail = body.get("message") or body
            code = body.get("code")
        except (ValueError, AttributeError):
            detail = response.text[:200]
        super().__init__(f"{method} {path} → {response.status_code}: {detail}")
        self.status = response.status_code
        self.code = code            # the api's machine-readable error code, e.g. vehicle_revoked
        self.detail = detail
        self.response = response


class VehicleRevoked(RuntimeError):
    """An operator revoked the vehicle: it must not enroll again by itself (only an operator re-admits it)."""


class OperatorApi:
    """requests with the base URL and a bearer token; logs in again once when the access token expired."""

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self.timeout = timeout
        self.session = requests.Session()
        self._lock = threading.Lock()

    def login(self) -> OperatorApi:
        response = self.session.post(f"{self.base_url}/api/v1/auth/login", timeout=self.timeout,
                                     json={"username": self.username, "password": self._password})
        if response.status_code != 200:
            raise ApiError("POST", "/api/v1/auth/login", response)
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
        return self

    def request(self, method: str, path: str, *, expect: tuple[int, ...] = (200,), **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        response = self.session.request(method, f"{self.base_url}{path}", **kwargs)
        if response.status_code == 401 and "Authorization" in self.session.headers:
            with self._lock:
                self.login()
            response = self.session.request(method, f"{self.base_url}{path}", **kwargs)
        if response.status_code not in expect:
            raise ApiError(method, path, response)
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, json: Any = None, expect: tuple[int, ...] = (200, 201), **kwargs: Any) -> Any:
        return self.request("POST", path, json=json, expect=expect, **kwargs).json()
