"""Prometheus metrics of this process (requests, latencies) plus gauges read from the database and the broker at
scrape time.

The api runs as one process with many threads (api/server.py, API_WORKERS=1), so in-process counters are exact.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict

from flask import Flask, Response, g, request

from fleetcore.emqx_api import INGEST_ACTIONS, EmqxApi, EmqxApiError

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


class ScrapeCache:
    """The database and broker part of a scrape, computed by one scrape at a time (the others wait and take its
    result, or compute a fresh one when it is older than ``API_METRICS_CACHE_S``): however often /metrics is called,
    at most one set of gauge queries runs at once per process, and with a cache at most one per period."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: list[str] | None = None
        self._at = 0.0

    def get(self, max_age_s: float, compute) -> list[str]:
        asked = time.monotonic()
        with self._lock:
            # Computed after this scrape arrived (while it waited), or young enough: share it.
            if self._lines is not None and (self._at >= asked or asked - self._at < max_age_s):
                return self._lines
            started = time.monotonic()
            self._lines = compute()
            self._at = started
            return self._lines


def install(app: Flask) -> RequestMetrics:
    metrics = RequestMetrics()
    app.extensions["fleet.metrics"] = metrics
    app.extensions["fleet.metrics_scrape"] = ScrapeCache()

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
    # Counted as rejects are written (sql/code/45_ingest_totals.sql): never lowered by retention, one row per reason.
    lines += ["# HELP fleet_ingest_rejected_total Inbound MQTT messages dead-lettered, by reason.",
              "# TYPE fleet_ingest_rejected_total counter"]
    cur.execute("SELECT reason, total, not_stored FROM ingest_rejected_totals ORDER BY reason")
    totals = cur.fetchall()
    lines += [f'fleet_ingest_rejected_total{{reason="{row["reason"]}"}} {row["total"]}' for row in totals]
    # Of those, the ones past a client's dead-letter cap per minute: counted only (sql/071_dead_letter_cap.sql).
    lines += ["# HELP fleet_ingest_rejected_not_stored_total Dead letters counted but not stored: their client was "
              "past ingest.settings.max_rejected_per_minute.", "# TYPE fleet_ingest_rejected_not_stored_total counter"]
    lines += [f'fleet_ingest_rejected_not_stored_total{{reason="{row["reason"]}"}} {row["not_stored"]}'
              for row in totals]
    # Messages the ingest could not apply yet (sql/code/25_ingest_parked.sql): the worker re-applies them.
    cur.execute("SELECT parked, oldest_s, max_attempts FROM ingest.parked_summary()")
    parked = cur.fetchone()
    lines += ["# HELP fleet_ingest_parked Inbound messages parked by the ingest, waiting for the worker to apply "
              "them again.", "# TYPE fleet_ingest_parked gauge", f"fleet_ingest_parked {parked['parked']}",
              "# HELP fleet_ingest_parked_oldest_seconds Age of the oldest parked message (0 when none).",
              "# TYPE fleet_ingest_parked_oldest_seconds gauge",
              f"fleet_ingest_parked_oldest_seconds {parked['oldest_s']:.3f}",
              "# HELP fleet_ingest_parked_max_attempts Most failed attempts of any parked message.",
              "# TYPE fleet_ingest_parked_max_attempts gauge",
              f"fleet_ingest_parked_max_attempts {parked['max_attempts']}"]
    # Telemetry the broker queued and the worker has not applied yet (sql/100_telemetry_queue.sql): near 0 and a
    # fraction of a second old while the worker keeps up; growing means it does not (docs/OPERATIONS.md).
    cur.execute("SELECT queued, oldest_s FROM ingest.telemetry_queue_summary()")
    queue = cur.fetchone()
    lines += ["# HELP fleet_ingest_telemetry_queued Telemetry messages queued by the broker, not applied yet "
              "(counted up to 100000).", "# TYPE fleet_ingest_telemetry_queued gauge",
              f"fleet_ingest_telemetry_queued {queue['queued']}",
              "# HELP fleet_ingest_telemetry_queue_oldest_seconds Age of the oldest queued telemetry message (0 when "
              "none).", "# TYPE fleet_ingest_telemetry_queue_oldest_seconds gauge",
              f"fleet_ingest_telemetry_queue_oldest_seconds {queue['oldest_s']:.3f}"]
    lines += ["# HELP fleet_dispatch_queue_depth Missions queued for dispatch.",
              "# TYPE fleet_dispatch_queue_depth gauge"]
    cur.execute("SELECT dispatch_blocker(vehicle_id) AS reason, count(*) AS n FROM missions WHERE state = 'queued' "
                "GROUP BY 1 ORDER BY 1")
    blocked = cur.fetchall()
    lines.append(f"fleet_dispatch_queue_depth {sum(row['n'] for row in blocked)}")
    lines += ["# HELP fleet_dispatch_blocked Queued missions held back by dispatch gating, by blocked reason.",
              "# TYPE fleet_dispatch_blocked gauge"]
    lines += [f'fleet_dispatch_blocked{{reason="{row["reason"]}"}} {row["n"]}' for row in blocked if row["reason"]]
    lines += ["# HELP fleet_emergency_stops_active Emergency stops in force, by scope.",
              "# TYPE fleet_emergency_stops_active gauge"]
    cur.execute("SELECT s.scope, count(e.id) AS n FROM unnest(ARRAY['vehicle', 'fleet', 'all']) AS s(scope) "
                "LEFT JOIN emergency_stops e ON e.scope = s.scope AND e.released_at IS NULL GROUP BY 1 ORDER BY 1")
    lines += [f'fleet_emergency_stops_active{{scope="{row["scope"]}"}} {row["n"]}' for row in cur.fetchall()]
    lines += ["# HELP fleet_emergency_commands_unacknowledged Vehicles that have not confirmed their emergency "
              "command yet, by command.", "# TYPE fleet_emergency_commands_unacknowledged gauge"]
    cur.execute("SELECT c.command, count(v.vehicle_id) AS n FROM unnest(ARRAY['stop', 'release']) AS c(command) "
                "LEFT JOIN vehicle_estop_commands v ON v.command = c.command AND v.acknowledged_at IS NULL "
                "GROUP BY 1 ORDER BY 1")
    lines += [f'fleet_emergency_commands_unacknowledged{{command="{row["command"]}"}} {row["n"]}'
              for row in cur.fetchall()]
    return lines


def broker_action_counters(emqx: EmqxApi) -> list[str]:
    """The broker's own counts of messages its pgsql actions could not write (``failed``: PostgreSQL reported an
    error and the whole batch was dropped, docs/EMQX.md §5.6a) or gave up on (``dropped``: buffer full, request_ttl
    expired). Read from its API at scrape time; ``fleet_broker_metrics_up 0`` when it does not answer."""
    failed: list[str] = []
    dropped: list[str] = []
    try:
        for action in INGEST_ACTIONS:
            metrics = emqx.action_metrics(action)
            if metrics is None:
                continue
            failed.append(f'fleet_ingest_broker_failed_total{{action="{action}"}} {int(metrics.get("failed", 0))}')
            dropped.append(f'fleet_ingest_broker_dropped_total{{action="{action}"}} {int(metrics.get("dropped", 0))}')
    except EmqxApiError:
        return ["fleet_broker_metrics_up 0"]
    return ["# HELP fleet_ingest_broker_failed_total Messages a pgsql action of the broker failed to write "
            "(batch dropped on a database error). Must stay 0.", "# TYPE fleet_ingest_broker_failed_total counter",
            *failed,
            "# HELP fleet_ingest_broker_dropped_total Messages a pgsql action of the broker dropped (buffer full, "
            "request_ttl expired).", "# TYPE fleet_ingest_broker_dropped_total counter", *dropped,
            "fleet_broker_metrics_up 1"]
