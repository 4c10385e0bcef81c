"""The stand-in's read-only dashboard (emqx/standin/dashboard.py) on the dashboard listener: the page, a login
with the dashboard user from the configuration, a token that may read the REST API and change nothing, and the
subscription list it shows. In a real browser: tests/console/test_console_browser.py."""
from __future__ import annotations

import json
import urllib.request

import pytest

from tests.support.standin import StandinBroker

PASSWORD = "dash-board-password-1"


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    instance = StandinBroker(tmp_path_factory.mktemp("standin-dashboard"),
                             env={"EMQX_DASHBOARD__DEFAULT_PASSWORD": PASSWORD}).start()
    yield instance
    assert instance.stop() == 0


def call(broker, method: str, path: str, body=None, token: str | None = None) -> tuple[int, object]:
    request = urllib.request.Request(broker.api_url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw, status, kind = response.read(), response.status, response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        raw, status, kind = error.read(), error.code, error.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in kind and raw else raw.decode()


def login(broker, password: str = PASSWORD) -> tuple[int, object]:
    return call(broker, "POST", "/api/v5/login", {"username": "admin", "password": password})


def test_the_page_loads_nothing_from_outside(broker):
    status, page = call(broker, "GET", "/")
    assert status == 200 and "<title>Broker dashboard" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page


@pytest.mark.parametrize("body", [{"username": "admin", "password": "public"},
                                  {"username": "root", "password": PASSWORD}, {"username": "admin"},
                                  ["admin", PASSWORD]])
def test_a_wrong_login_is_refused(broker, body):
    status, answer = call(broker, "POST", "/api/v5/login", body)
    assert status in (400, 401)
    assert answer["code"] in ("BAD_USERNAME_OR_PWD", "BAD_REQUEST")


def test_the_dashboard_token_reads_but_changes_nothing(broker):
    status, answer = login(broker)
    assert status == 200, answer
    token = answer["token"]
    for path in ("/api/v5/clients", "/api/v5/subscriptions", "/api/v5/rules", "/api/v5/metrics?aggregate=true",
                 "/api/v5/stats"):
        assert call(broker, "GET", path, token=token)[0] == 200, path
    status, answer = call(broker, "POST", "/api/v5/publish", {"topic": "t", "payload": "p"}, token=token)
    assert (status, answer["code"]) == (403, "UNAUTHORIZED_ROLE")
    assert call(broker, "DELETE", "/api/v5/clients/someone", token=token)[0] == 403
    assert call(broker, "GET", "/api/v5/clients", token="made-up")[0] == 401
    assert call(broker, "POST", "/api/v5/logout", token=token)[0] == 204
    assert call(broker, "GET", "/api/v5/clients", token=token)[0] == 401


def test_subscriptions_are_listed_with_their_client(broker):
    client = broker.client("dash-sub-1").connect()
    try:
        client.subscribe("fleet/v1/dash-sub-1/cmd", 1)
        token = login(broker)[1]["token"]
        status, answer = call(broker, "GET", "/api/v5/subscriptions?clientid=dash-sub-1", token=token)
        assert status == 200
        assert answer["data"] == [{"clientid": "dash-sub-1", "topic": "fleet/v1/dash-sub-1/cmd", "qos": 1,
                                   "node": "emqx@127.0.0.1"}]
        assert answer["meta"]["count"] == 1
        metrics = call(broker, "GET", "/api/v5/metrics?aggregate=true", token=token)[1]
        assert metrics["client.auth.success"] >= 1 and "client.auth.failure" in metrics
    finally:
        client.disconnect()
