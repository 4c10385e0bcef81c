"""Operator queries over seeded data (``bench/seed.sql`` via ``bench.seed``: 10,000 vehicles, 100,000 missions with
600,000 events, 24 h of 1 Hz telemetry for one vehicle), through the api (granian, JWT, marshmallow) with wrk on
one keep-alive connection, each beside the same SQL run directly in the same run (the api's own query functions
on one psycopg2 connection: the database's share of the time).

Cases and targets: ``GET /reports/missions`` over everything and with a time filter selecting 1 %
(p95 < 1 s); fleet-wide latest telemetry for 10,000 vehicles (< 100 ms); 24 h of one vehicle at ``interval=1m``
(< 100 ms). The EXPLAIN ANALYZE of every statement is kept in the results file (raw.explain).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlencode

import psycopg2
import psycopg2.extras
import requests

from api.queries import reports, telemetry, vehicles
from bench import report, seed, wrk
from bench.loadgen import percentiles
from bench.report import say
from bench.stackutil import start_stack


class RecordingCursor(psycopg2.extras.RealDictCursor):
    """A dict cursor (as the api uses) that remembers each statement, for EXPLAIN afterwards."""

    recorded: ClassVar[list[tuple[str, object]]] = []

    def execute(self, query, vars=None):  # noqa: A002 - psycopg2's parameter name
        RecordingCursor.recorded.append((query, vars))
        return super().execute(query, vars)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cases(sizes: seed.SeedSizes, now: datetime) -> list[dict]:
    """Each case: the API path + query and the same SQL as a function of a cursor; target in ms and percentile."""
    report_from = now - timedelta(days=sizes.days * 0.5)
    report_to = report_from + timedelta(days=sizes.days * 0.01)
    vid = sizes.prefix + "00001"
    hist_end, hist_start = now, now - timedelta(hours=24)

    def mission_report(args: dict):
        def run(cur):
            clause, params = reports.filters(None, args)
            reports.summary(cur, clause, params)
            page_clause, page_params = reports.filters(None, args, None)
            reports.page(cur, page_clause, page_params, args["limit"])
        return run

    def fleet_latest(cur):
        vehicles.fleet_latest_json(cur, None, sizes.fleet)

    def history(cur):
        vehicles.visible_vehicle(cur, vid, None)
        telemetry.buckets(cur, vid, hist_start, hist_end, 60, None, 2000)

    return [
        {"name": "mission report, all missions (summary + first page of 1,000)", "target": ("p95", 1000.0),
         "path": "/api/v1/reports/missions?" + urlencode({"limit": 1000}),
         "sql": mission_report({"limit": 1000})},
        {"name": "mission report, time filter selecting 1 %", "target": ("p95", 1000.0),
         "path": "/api/v1/reports/missions?" + urlencode({"from": _iso(report_from), "to": _iso(report_to),
                                                          "limit": 1000}),
         "sql": mission_report({"from_": report_from, "to": report_to, "limit": 1000})},
        {"name": f"fleet-wide latest telemetry, {sizes.vehicles:,} vehicles", "target": ("p95", 100.0),
         "path": "/api/v1/telemetry/latest?" + urlencode({"fleet_id": sizes.fleet}), "sql": fleet_latest},
        {"name": "24 h history of one vehicle at interval=1m (1,440 buckets)", "target": ("p95", 100.0),
         "path": f"/api/v1/vehicles/{vid}/telemetry?" + urlencode({"from": _iso(hist_start), "to": _iso(hist_end),
                                                                   "interval": "1m", "limit": 2000}),
         "sql": history},
    ]


def time_sql(conn, fn, seconds: float, min_runs: int = 5) -> dict:
    """Run ``fn(cursor)`` in its own transaction repeatedly on one connection; latency percentiles in ms."""
    samples, deadline = [], time.monotonic() + seconds
    while len(samples) < min_runs or time.monotonic() < deadline:
        started = time.perf_counter()
        with conn.cursor(cursor_factory=RecordingCursor) as cur:
            fn(cur)
        conn.commit()
        samples.append((time.perf_counter() - started) * 1000.0)
    values = sorted(samples)
    return {"runs": len(values), "p50_ms": round(values[len(values) // 2], 2),
            "p95_ms": round(values[min(len(values) - 1, int(0.95 * len(values)))], 2),
            "p99_ms": percentiles(values)["p99"]}


def explain(conn, fn) -> list[dict]:
    """EXPLAIN (ANALYZE, BUFFERS) of each statement ``fn`` runs, slowest first."""
    RecordingCursor.recorded = []
    with conn.cursor(cursor_factory=RecordingCursor) as cur:
        fn(cur)
    statements = list(RecordingCursor.recorded)
    conn.rollback()
    plans = []
    with conn.cursor() as cur:
        for query, params in statements:
            if query.lstrip().upper().startswith("SET "):   # planner settings the query function makes: apply them
                cur.execute(query, params)
                continue
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + query, params)
            lines = [row[0] for row in cur.fetchall()]
            execution = next((x for x in lines if x.startswith("Execution Time")), "")
            plans.append({"statement": " ".join(query.split())[:300], "execution": execution, "plan": lines})
    conn.rollback()
    return sorted(plans, key=lambda p: -float(p["execution"].split(":")[1].split()[0]) if p["execution"] else 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, to prove the benchmark works")
    parser.add_argument("--seconds", type=float, default=None, help="per case, for the API and for the SQL")
    args = parser.parse_args(argv)
    sizes = (seed.SeedSizes(vehicles=1000, missions=5000, days=100, history_points=86_400, background_vehicles=5)
             if args.quick else seed.SeedSizes())
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    binary, tool_note = wrk.ensure_installed(say)
    with tempfile.TemporaryDirectory(prefix="bench-queries-") as tmp:
        stack = start_stack(Path(tmp), ("api",))
        try:
            say(f"queries: seeding {sizes.vehicles:,} vehicles, {sizes.missions:,} missions (bench/seed.sql)")
            seeded = seed.seed(stack.database_url, sizes)
            say(f"queries: seeded in {seeded['seconds']} s: {seeded['rows']}")
            login = requests.post(stack.url("api") + "/api/v1/auth/login", timeout=30,
                                  json={"username": "admin", "password": stack.secrets["FLEET_ADMIN_PASSWORD"]})
            login.raise_for_status()
            headers = {"Authorization": "Bearer " + login.json()["access_token"]}
            conn = psycopg2.connect(stack.database_url, application_name="bench-queries")
            results = []
            for case in cases(sizes, datetime.now(UTC)):
                check = requests.get(stack.url("api") + case["path"], headers=headers, timeout=60)
                if check.status_code != 200:
                    raise RuntimeError(f"{case['path']} answered {check.status_code}: {check.text[:300]}")
                say(f"queries: {case['name']}: api, then the same SQL, {seconds:.0f} s each")
                api = wrk.run(binary, stack.url("api") + case["path"], headers=headers, seconds=seconds,
                              connections=1, threads=1)
                sql = time_sql(conn, case["sql"], seconds)
                results.append({"case": case["name"], "path": case["path"], "target": case["target"],
                                "response_bytes": len(check.content), "api": api, "sql": sql,
                                "explain": explain(conn, case["sql"])})
            conn.close()
        finally:
            stack.stop("benchmark finished")

    rows, summary = [], []
    for r in results:
        api, sql = r["api"], r["sql"]
        pct, limit = r["target"]
        verdict = "met" if api[f"{pct}_ms"] is not None and api[f"{pct}_ms"] < limit else "missed"
        ratio = round(api["p50_ms"] / sql["p50_ms"], 2) if sql["p50_ms"] else None
        rows.append([r["case"], api["requests"], api["p50_ms"], api["p95_ms"], api["p99_ms"], sql["p50_ms"],
                     sql["p95_ms"], ratio, round(r["response_bytes"] / 1024, 1), f"{pct} < {limit:,.0f} ms: {verdict}"])
        slowest = r["explain"][0] if r["explain"] else None
        summary.append(f"{r['case']}: api p95 {api['p95_ms']:,.1f} ms ({verdict}), p50 {api['p50_ms']:,.1f} ms = "
                       f"{ratio}× the same SQL run directly ({sql['p50_ms']:,.1f} ms)"
                       + (f"; slowest statement {slowest['execution'].lower()}" if slowest else ""))
    notes = [f"data: bench/seed.sql via `python -m bench.seed` — {seeded['rows']} rows in fleet "
             f"'{sizes.fleet}', seeded in {seeded['seconds']} s; missions spread evenly over {sizes.days} days",
             f"api: served as in production (python -m api.server), admin JWT; load: {api['tool']} ({tool_note}), "
             f"one keep-alive connection (sequential requests), {seconds:.0f} s per case",
             "SQL: the api's own query functions (api/queries/*) on one psycopg2 connection with dict rows, one "
             "transaction per run, fetched but not serialised; × SQL = api p50 ÷ SQL p50",
             "EXPLAIN (ANALYZE, BUFFERS) of every statement: bench/results/queries.json raw.results[].explain"]
    report.write("queries", "Operator queries over seeded data: api vs the same SQL",
                 ["query", "api requests", "api p50 ms", "api p95 ms", "api p99 ms", "SQL p50 ms", "SQL p95 ms",
                  "× SQL", "response KiB", "target"], rows, summary, notes,
                 raw={"results": results, "seed": seeded, "quick": args.quick})


if __name__ == "__main__":
    main()
