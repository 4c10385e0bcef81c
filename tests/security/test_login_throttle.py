"""The login throttle (api/throttle.py): counters that hold under parallel attempts, per account and address,
per address, per account and globally, addresses seen through trusted proxies only, and bcrypt work bounded.

The counters are tested on this module's own api, which trusts 127.0.0.1 as a reverse proxy: each test speaks for
clients at addresses of its own through ``X-Forwarded-For``, and low per-address, per-user and global limits keep
the numbers small. The gate on bcrypt is tested on the session's stack with its defaults.
"""
from __future__ import annotations

import itertools
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import psycopg2.extras
import pytest
import requests

from api import throttle
from api.throttle import client_address, trusted_networks
from fleetctl.stack import Stack, StackConfig
from tests.conftest import free_ports
from tests.support.operators import ApiClient, unique
from tests.support.reliability import record

PAIR, PER_ADDR, PER_USER, GLOBAL = 5, 8, 12, 60
_addresses = itertools.count(1)


def new_address() -> str:
    """A client address no other test of this module uses (TEST-NET-2)."""
    n = next(_addresses)
    return f"198.51.{100 + n // 250}.{n % 250 + 1}"


@pytest.fixture(scope="module")
def proxied_stack(tmp_path_factory):
    config = StackConfig(state_dir=tmp_path_factory.mktemp("login-throttle-stack"), ports=free_ports(),
                         durable=False, components=("api",),
                         extra_env={"FLEET_LOG_LEVEL": os.environ.get("FLEET_TEST_LOG_LEVEL", "INFO"),
                                    "API_TRUSTED_PROXIES": "127.0.0.1",
                                    "API_LOGIN_CONCURRENCY": "64", "API_THREADS": "64",  # the gate is not tested here
                                    "API_LOGIN_MAX_FAILURES": str(PAIR),
                                    "API_LOGIN_MAX_FAILURES_PER_ADDR": str(PER_ADDR),
                                    "API_LOGIN_MAX_FAILURES_PER_USER": str(PER_USER),
                                    "API_LOGIN_MAX_FAILURES_GLOBAL": str(GLOBAL)})
    stack = Stack(config, out=lambda line: None)
    stack.start()
    yield stack
    stack.stop("login throttle tests finished")


@pytest.fixture(scope="module")
def proxied_admin(proxied_stack) -> ApiClient:
    return ApiClient(proxied_stack.url("api")).login("admin", proxied_stack.secrets["FLEET_ADMIN_PASSWORD"])


@pytest.fixture
def account(proxied_admin) -> tuple[str, str]:
    username, password = unique("operator"), "correct horse battery " + uuid.uuid4().hex[:8]
    response = proxied_admin.post("/api/v1/users", json={"username": username, "password": password,
                                                          "role": "operator", "fleets": []})
    assert response.status_code == 201, response.text
    return username, password


def login(stack: Stack, username: str, password: str, address: str) -> requests.Response:
    return requests.post(f"{stack.url('api')}/api/v1/auth/login", json={"username": username, "password": password},
                         headers={"X-Forwarded-For": address}, timeout=60)


def test_parallel_wrong_passwords_get_exactly_the_limit(proxied_stack, account):
    """Before: the count was read before bcrypt and written after, so 64 parallel attempts got 19 tries."""
    username, _ = account
    address = new_address()
    with ThreadPoolExecutor(64) as pool:
        statuses = list(pool.map(lambda _: login(proxied_stack, username, "wrong", address).status_code, range(64)))
    assert statuses.count(401) == PAIR, statuses
    assert statuses.count(429) == 64 - PAIR, statuses
    record("security", "64 parallel wrong passwords for one account from one address", attempts=64,
           passwords_checked=statuses.count(401), limit=PAIR)


def test_behind_a_trusted_proxy_each_client_has_its_own_count(proxied_stack, account):
    """Before: every client behind the proxy had the proxy's address, so 5 wrong passwords from anyone locked the
    user out."""
    username, password = account
    attacker, owner = new_address(), new_address()
    assert [login(proxied_stack, username, "wrong", attacker).status_code for _ in range(PAIR + 1)] == \
        [401] * PAIR + [429]
    assert login(proxied_stack, username, password, owner).status_code == 200
    refused = login(proxied_stack, username, password, attacker)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0


def test_spraying_one_password_across_usernames_is_throttled_per_address(proxied_stack):
    address = new_address()
    statuses = [login(proxied_stack, unique("nobody"), "Winter2026!", address).status_code
                for _ in range(PER_ADDR + 1)]
    assert statuses == [401] * PER_ADDR + [429]
    assert login(proxied_stack, unique("nobody"), "Winter2026!", new_address()).status_code == 401, \
        "another address is not held back"


def test_guessing_one_account_from_many_addresses_is_throttled_per_account(proxied_stack, account):
    username, password = account
    statuses = [login(proxied_stack, username, "wrong", new_address()).status_code for _ in range(PER_USER + 1)]
    assert statuses == [401] * PER_USER + [429]
    assert login(proxied_stack, username, password, new_address()).status_code == 429, \
        "the right password does not bypass the account's limit"


def test_successful_logins_do_not_count(proxied_stack, account):
    username, password = account
    address = new_address()
    assert [login(proxied_stack, username, password, address).status_code for _ in range(PER_ADDR + 2)] == \
        [200] * (PER_ADDR + 2)


def global_failures(stack: Stack) -> int:
    with psycopg2.connect(stack.database_url) as conn, conn.cursor(cursor_factory=psycopg2.extras.DictCursor) as cur:
        cur.execute("SELECT failures FROM login_throttle WHERE key = 'global'")
        row = cur.fetchone()
    conn.close()
    return row["failures"] if row else 0


def test_failures_from_everywhere_meet_the_global_limit(proxied_stack, account):
    username, password = account
    remaining = GLOBAL - global_failures(proxied_stack)
    assert remaining > 0
    statuses = [login(proxied_stack, unique("nobody"), "wrong", new_address()).status_code for _ in range(remaining)]
    assert statuses == [401] * remaining
    assert login(proxied_stack, unique("nobody"), "wrong", new_address()).status_code == 429
    assert login(proxied_stack, username, password, new_address()).status_code == 429, "every login waits"
    assert global_failures(proxied_stack) == GLOBAL, "refused attempts are not counted"


def test_x_forwarded_for_counts_only_from_a_trusted_proxy():
    trusted = trusted_networks("127.0.0.1, 10.0.0.0/8")
    assert client_address("203.0.113.9", "192.0.2.1", trusted) == "203.0.113.9", "the peer is no proxy of ours"
    assert client_address("127.0.0.1", "192.0.2.1", trusted) == "192.0.2.1"
    assert client_address("127.0.0.1", "192.0.2.66, 192.0.2.1, 10.1.2.3", trusted) == "192.0.2.1", \
        "the right-most address a trusted proxy did not write; what the client wrote is ignored"
    assert client_address("127.0.0.1", "not-an-address", trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", None, trusted) == "127.0.0.1"


def test_a_login_flood_is_refused_with_503_not_queued(api_url, make_user):
    """The session stack's default gate (API_LOGIN_CONCURRENCY 2, twice as many waiting): of 32 logins sent at
    once, the ones past the gate's places are answered 503 login_busy with Retry-After at once; the rest log in."""
    user = make_user("viewer")
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda _: requests.post(f"{api_url}/api/v1/auth/login", timeout=60, json={
            "username": user.username, "password": user.password}), range(32)))
    busy = [r for r in responses if r.status_code == 503]
    assert busy, [r.status_code for r in responses]
    assert all(r.json()["code"] == "login_busy" and r.headers["Retry-After"] == "1" for r in busy)
    assert len(busy) + sum(r.status_code == 200 for r in responses) == 32
    record("security", "32 logins at once (bcrypt gate of 2)", logins=32, refused_503=len(busy),
           server_errors=sum(r.status_code >= 500 and r.status_code != 503 for r in responses))


def test_x_forwarded_for_from_an_untrusted_peer_changes_nothing(api_url, make_user):
    """The session's stack trusts no proxy: a client writing its own X-Forwarded-For is still counted at its own
    address, so a fresh header per attempt does not buy fresh tries."""
    user = make_user("viewer")

    def attempt(password: str) -> int:
        return requests.post(f"{api_url}/api/v1/auth/login", json={"username": user.username, "password": password},
                             headers={"X-Forwarded-For": new_address()}, timeout=60).status_code
    assert [attempt("wrong") for _ in range(6)] == [401] * 5 + [429]
    assert attempt(user.password) == 429


@pytest.mark.parametrize("username", ["nul\u0000byte", "trailing-newline\n", "é" * 64])
def test_odd_usernames_are_answered_not_crashed_on(anonymous, username):
    """The username becomes part of a counter's key (api/throttle.py): what PostgreSQL text cannot hold is a 4xx."""
    response = anonymous.post("/api/v1/auth/login", json={"username": username, "password": "wrong"})
    assert response.status_code in (401, 422), response.text
    assert response.headers["Content-Type"].startswith("application/json")


def test_expired_counters_are_pruned_and_live_ones_kept(db_url):
    limits = throttle.Limits(window_s=900, pair=5, user=50, addr=50, global_=1000)
    conn = psycopg2.connect(db_url)
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute("INSERT INTO login_throttle (key, failures, window_start) VALUES "
                        "('user:old', 3, now() - interval '901 seconds'), "
                        "('user:live', 3, now() - interval '60 seconds')")
            attempt = throttle.reserve(cur, limits, "someone", "192.0.2.7")
            attempt.failed(cur)
            cur.execute("SELECT key, failures FROM login_throttle ORDER BY key")
            assert {row["key"]: row["failures"] for row in cur.fetchall()} == {
                "addr:192.0.2.7": 1, "global": 1, "pair:someone|192.0.2.7": 1, "user:live": 3, "user:someone": 1}
    finally:
        conn.close()
