"""``GET /api/v1/events``: the operator console's server-sent-event stream. Only for a logged-in operator, and an
open stream holds no request thread, so 50 consoles leave the REST API its latency (api/asgi.py).

The test stack sends a keepalive every second (API_EVENTS_KEEPALIVE_S in tests/conftest.py)."""
from __future__ import annotations

import statistics
import time

import requests

from tests.support.reliability import record

STREAMS = 50            # more than the api's 16 request threads
MAX_SLOWDOWN = 10.0     # median with the streams open ÷ median before; loose on purpose: the machine is shared


def _open_stream(api_url: str, token: str) -> requests.Response:
    response = requests.get(f"{api_url}/api/v1/events", headers={"Authorization": f"Bearer {token}"},
                            stream=True, timeout=20)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return response


def _next_event(lines) -> str:
    """The next non-empty line of a stream (an SSE comment, event or field)."""
    for line in lines:
        if line:
            return line
    raise AssertionError("the event stream ended")


def test_the_event_stream_is_for_logged_in_operators(api_url, anonymous):
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        response = requests.get(f"{api_url}/api/v1/events", headers=headers, timeout=20)
        assert response.status_code == 401, response.text
        assert response.headers["Content-Type"].startswith("application/json")
        assert set(response.json()) == {"code", "message", "details"}


def test_a_viewer_gets_a_keepalive_comment_every_interval(api_url, make_user, fleet):
    viewer = make_user("viewer", [fleet])
    stream = _open_stream(api_url, viewer.tokens["access_token"])
    try:
        assert stream.headers["Cache-Control"].startswith("no-store")
        lines = stream.iter_lines(decode_unicode=True)
        assert [_next_event(lines) for _ in range(3)] == [": keepalive"] * 3
    finally:
        stream.close()


def test_50_open_streams_leave_the_rest_api_its_latency(api_url, admin):
    def median_list_vehicles() -> float:
        samples = []
        for _ in range(10):
            started = time.perf_counter()
            response = admin.get("/api/v1/vehicles", timeout=20)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
        return statistics.median(samples)

    before = median_list_vehicles()
    streams = []
    try:
        for _ in range(STREAMS):
            streams.append(_open_stream(api_url, admin.tokens["access_token"]))
        readers = [stream.iter_lines(decode_unicode=True) for stream in streams]
        assert all(_next_event(lines) == ": keepalive" for lines in readers)
        during = median_list_vehicles()
        # and every stream is still alive afterwards
        assert all(_next_event(lines) == ": keepalive" for lines in readers)
    finally:
        for stream in streams:
            stream.close()
    ratio = during / before
    assert ratio <= MAX_SLOWDOWN, f"GET /vehicles took {ratio:.1f}× longer with {STREAMS} event streams open"
    record("security", "api with 50 open event streams", streams=STREAMS, slowdown_list_vehicles=round(ratio, 2))
