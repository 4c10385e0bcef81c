"""``GET /metrics`` of the api can be restricted to a scraper holding ``FLEET_METRICS_TOKEN`` (api/health.py), on
this module's own api; the session's stack leaves it open, as the embedded stack does."""
from __future__ import annotations

import os

import psycopg2
import psycopg2.extras
import pytest
import requests

from api.metrics import database_gauges
from fleetctl.stack import Stack, StackConfig
from tests.conftest import free_ports
from tests.support.reliability import record

TOKEN = "metrics-" + os.urandom(12).hex()


@pytest.fixture(scope="module")
def metrics_stack(tmp_path_factory):
    config = StackConfig(state_dir=tmp_path_factory.mktemp("metrics-token-stack"), ports=free_ports(),
                         durable=False, components=("api",),
                         extra_env={"FLEET_LOG_LEVEL": os.environ.get("FLEET_TEST_LOG_LEVEL", "INFO"),
                                    "FLEET_METRICS_TOKEN": TOKEN, "API_METRICS_CACHE_S": "3600"})
    stack = Stack(config, out=lambda line: None)
    stack.start()
    stack.metrics_url = f"{stack.url('api')}/metrics"
    yield stack
    stack.stop("metrics token tests finished")


@pytest.fixture(scope="module")
def metrics_url(metrics_stack) -> str:
    return metrics_stack.metrics_url


# ids fixed: the token is random per process, and xdist's workers must collect the same test names
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "],
                         ids=["none", "wrong", "basic-scheme", "token-plus-one", "empty-bearer"])
def test_metrics_without_the_token_are_refused(metrics_url, header):
    response = requests.get(metrics_url, headers={"Authorization": header} if header else {}, timeout=10)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized" and "fleet_" not in response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_metrics_with_the_token_answer(metrics_url):
    response = requests.get(metrics_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200
    assert "fleet_database_up 1" in response.text


def test_health_checks_need_no_token(metrics_url):
    assert requests.get(metrics_url.replace("/metrics", "/healthz"), timeout=10).status_code == 200


def test_without_a_token_metrics_are_open(api_url):
    assert requests.get(f"{api_url}/metrics", timeout=10).status_code == 200


def test_a_scrape_never_reads_the_dead_letters(db_url):
    """The scrape reads the totals the ingest keeps (ingest_rejected_totals: one row per reason), never the
    dead-letter table itself: before, every scrape ran a GROUP BY over all of rejected_messages."""
    statements: list[str] = []

    class Recording(psycopg2.extras.RealDictCursor):
        def execute(self, query, vars=None):  # noqa: A002 - psycopg2's parameter name
            statements.append(query)
            return super().execute(query, vars)

    conn = psycopg2.connect(db_url)
    try:
        with conn.cursor(cursor_factory=Recording) as cur:
            lines = database_gauges(cur)
    finally:
        conn.close()
    assert any(line.startswith("# TYPE fleet_ingest_rejected_total counter") for line in lines)
    assert statements and not [s for s in statements if "rejected_messages" in s]


def test_gauges_are_read_from_the_database_at_most_once_per_cache_period(metrics_stack, metrics_url):
    """With API_METRICS_CACHE_S (here an hour) a scrape flood costs the database nothing after the first scrape;
    the process's own request counters stay live."""
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def scrape() -> str:
        response = requests.get(metrics_url, headers=headers, timeout=10)
        assert response.status_code == 200
        return response.text
    first = scrape()
    with psycopg2.connect(metrics_stack.database_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO rejected_messages (received_at, clientid, topic, reason) "
                    "VALUES (now(), 'probe', 'fleet/v1/probe/telemetry', 'cache_probe')")
    conn.close()
    second = scrape()
    assert "cache_probe" not in second, "the database gauges come from the cache"
    assert _requests_total(second) > _requests_total(first), "request counters are not cached"
    record("security", "metrics scrapes with a gauge cache (API_METRICS_CACHE_S)", scrapes=2, database_reads=1)


def _requests_total(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('fleet_api_requests_total{method="GET",endpoint="/metrics",status="200"}'))
