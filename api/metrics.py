"""Prometheus metrics of this process (requests, latencies) plus gauges read from the database at scrape time.

The api runs as one process with many threads (api/server.py, API_WORKERS=1), so in-process counters are exact.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict

from flask import Flask, Response, g, request

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.duration_buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.duration_sum: dict[str, float] = defaultdict(float)

    def observe(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, endpoint, status)] += 1
            buckets = self.duration_buckets[endpoint]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            buckets[-1] += 1
            self.duration_sum[endpoint] += seconds

    def render(self) -> list[str]:
        lines = ["# HELP fleet_api_requests_total HTTP requests by method, endpoint and status.",
                 "# TYPE fleet_api_requests_total counter"]
        with self._lock:
            for (method, endpoint, status), count in sorted(self.requests.items()):
                lines.append(f'fleet_api_requests_total{{method="{method}",endpoint="{endpoint}",'
                             f'status="{status}"}} {count}')
            lines += ["# HELP fleet_api_request_duration_seconds Request latency by endpoint.",
                      "# TYPE fleet_api_request_duration_seconds histogram"]
            for endpoint, buckets in sorted(self.duration_buckets.items()):
                for bound, count in zip(BUCKETS, buckets, strict=False):
                    lines.append(f'fleet_api_request_duration_seconds_bucket{{endpoint="{endpoint}",le="{bound}"}} '
                                 f'{count}')
                lines.append(f'fleet_api_request_duration_seconds_bucket{{endpoint="{endpoint}",le="+Inf"}} '
                             f'{buckets[-1]}')
                lines.append(f'fleet_api_request_duration_seconds_sum{{endpoint="{endpoint}"}} '
                             f'{self.duration_sum[endpoint]:.6f}')
                lines.append(f'fleet_api_request_duration_seconds_count{{endpoint="{endpoint}"}} {buckets[-1]}')
        return lines


def install(app: Flask) -> RequestMetrics:
    metrics = RequestMetrics()
    app.extensions["fleet.metrics"] = metrics

    @app.before_request
    def _start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _record(response: Response) -> Response:
        started = g.get("request_started")
        if started is not None:
            endpoint = request.url_rule.rule if request.url_rule else "unmatched"
            metrics.observe(request.method, endpoint, response.status_code, time.perf_counter() - started)
        return response

    return metrics


def database_gauges(cur) -> list[str]:
    lines = ["# HELP fleet_missions Missions by state.", "# TYPE fleet_missions gauge"]
    cur.execute("SELECT s.state, count(m.id) AS n FROM mission_states s LEFT JOIN missions m ON m.state = s.state "
                "GROUP BY s.state ORDER BY s.state")
    lines += [f'fleet_missions{{state="{row["state"]}"}} {row["n"]}' for row in cur.fetchall()]
    lines += ["# HELP fleet_vehicles_online Vehicles currently online.", "# TYPE fleet_vehicles_online gauge"]
    cur.execute("SELECT count(*) AS n FROM vehicle_state WHERE online")
    lines.append(f"fleet_vehicles_online {cur.fetchone()['n']}")
    lines += ["# HELP fleet_ingest_rejected_total Inbound MQTT messages dead-lettered, by reason.",
              "# TYPE fleet_ingest_rejected_total counter"]
    cur.execute("SELECT reason, count(*) AS n FROM rejected_messages GROUP BY reason ORDER BY reason")
    lines += [f'fleet_ingest_rejected_total{{reason="{row["reason"]}"}} {row["n"]}' for row in cur.fetchall()]
    return lines
