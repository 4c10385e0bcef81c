"""End-to-end ingest: N vehicles publish QoS 1 telemetry → stand-in broker (HTTP authn + authz, rule engine,
PUBACK on receipt as EMQX does, buffered rule actions) → the telemetry queue in PostgreSQL → the worker's drain
(``python -m api.worker``, sets through the ingest SQL); against baselines measured in the same run on the same
PostgreSQL: mosquitto + counting / naive / batched subscribers, and COPY.

Loss is counted, not assumed: once the broker's rule actions have answered every request (its /api/v5 action
metrics) and the worker has drained the queue, rows in the database are compared with PUBACKed messages.
Throughput is rows stored per second, from the first publish to the moment the last one was stored (the stored
count, read every 10 ms once the load has ended) — like the baselines, which count until their subscriber
committed — not PUBACKs per second.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psycopg2

from bench import baselines, loadgen, mosquitto, report
from bench.fleet import free_port, provision_vehicles
from bench.report import say
from bench.stackutil import PeakRss, component_roots, wait_actions_processed, wait_telemetry_drained
from fleetctl.stack import Ports, Stack, StackConfig


def _stack(state_dir: Path) -> Stack:
    ports = Ports(**{name: free_port() for name in Ports.__dataclass_fields__})
    config = StackConfig(state_dir=state_dir, ports=ports, durable=True, components=("authsvc", "broker", "worker"),
                         extra_env={"FLEET_LOG_LEVEL": "WARNING"})
    stack = Stack(config, out=lambda line: None)
    stack.start()
    return stack


def _telemetry_rows(dsn: str, vehicle_prefix: str) -> int:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM telemetry WHERE vehicle_id LIKE %s", (vehicle_prefix + "%",))
        n = cur.fetchone()[0]
    conn.close()
    return n


def _last_stored_at(stack: Stack, prefix: str, acked: int, timeout: float = 300.0) -> float:
    """When the last acknowledged message was stored: the count of stored rows, read every 10 ms once the load has
    ended (as the baselines note their subscriber's last commit). If it never gets there — a message lost — the
    moment the broker's actions were done and the queue drained, so the loss shows in the table."""
    deadline = time.monotonic() + timeout
    conn = psycopg2.connect(stack.database_url)
    conn.autocommit = True

    def stored() -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM telemetry WHERE vehicle_id LIKE %s", (prefix + "%",))
            return cur.fetchone()[0]
    try:
        next_idle_check = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if stored() >= acked:
                return time.time()
            if time.monotonic() > next_idle_check:
                wait_actions_processed(stack, timeout=timeout)
                wait_telemetry_drained(stack, timeout=timeout)
                if stored() < acked:  # everything was processed, and some are missing
                    return time.time()
                next_idle_check = time.monotonic() + 2.0
            time.sleep(0.01)
    finally:
        conn.close()
    raise TimeoutError(f"acknowledged messages not stored after {timeout:.0f} s")


def _bench_db(stack: Stack) -> str:
    admin = psycopg2.connect(stack.postgres.url())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS bench")
        cur.execute("CREATE DATABASE bench")
    admin.close()
    return stack.postgres.url(database="bench")


def run_case(stack: Stack, n_vehicles: int, messages: int, mosquitto_binary: str | None) -> list[dict]:
    rows = []
    prefix = f"bench{n_vehicles}-"
    credentials = provision_vehicles(stack.database_url, stack.secrets["FLEET_DEVICE_SECRET_KEY"], prefix,
                                     n_vehicles)
    total = n_vehicles * messages
    spec = loadgen.LoadSpec("127.0.0.1", stack.config.ports.mqtt, credentials, messages, window=10)
    say(f"ingest: {n_vehicles} vehicles × {messages} messages through the stand-in")
    with PeakRss(component_roots(stack)) as memory:
        result = loadgen.run(spec)
        processed_at = _last_stored_at(stack, prefix, result["acked"])
    stored = _telemetry_rows(stack.database_url, prefix)
    rows.append({"case": "stand-in broker → queue → worker's drain (authn, ACL, validation, dedup, buffered actions)",
                 "stored": stored, "per_s": round(stored / (processed_at - result["wall_started"]), 1),
                 "p50": result["latency_ms"]["p50"],
                 "p99": result["latency_ms"]["p99"], "lost": result["acked"] - stored, "raw": result,
                 "peak_rss_mib": memory.peak_mib(), "peak_pss_mib": memory.peak_pss_mib(),
                 "processes": memory.processes})

    bench_dsn = _bench_db(stack)
    vehicle_ids = [vid for vid, _ in credentials]
    if mosquitto_binary:
        for kind in ("counting", "naive", "batched"):
            baselines.create_table(bench_dsn)
            with mosquitto.Mosquitto(mosquitto_binary, free_port()) as broker, \
                    baselines.Subscriber(kind, broker.port, bench_dsn) as subscriber:
                say(f"ingest baseline: mosquitto + {kind} subscriber")
                spec = loadgen.LoadSpec("127.0.0.1", broker.port, [(v, None) for v in vehicle_ids], messages,
                                        window=10)
                with PeakRss({"mosquitto": broker.process.pid}) as memory:
                    load = loadgen.run(spec)
                subscriber.wait_for(load["acked"], timeout=120)
                summary = subscriber.summary(load["wall_started"])
            stored = summary["stored"] if kind == "counting" else baselines.count_rows(bench_dsn)
            rows.append({"case": f"mosquitto + {kind} subscriber", "stored": stored,
                         "per_s": summary["stored_per_s"], "p50": summary["latency_ms"]["p50"],
                         "p99": summary["latency_ms"]["p99"], "lost": load["acked"] - stored,
                         "raw": {"load": load, "subscriber": summary}, "peak_rss_mib": memory.peak_mib()})
    baselines.create_table(bench_dsn)
    copy = baselines.copy_rows(bench_dsn, vehicle_ids, messages)
    rows.append({"case": "COPY of the same rows (storage ceiling)", "stored": copy["stored"],
                 "per_s": copy["stored_per_s"], "p50": None, "p99": None, "lost": 0, "raw": copy})
    for row in rows:
        row["vehicles"], row["offered"] = n_vehicles, total
    return rows


def _memory_line(n: int, ours: dict, case_rows: list[dict]) -> str:
    """Peak RSS per component during the stand-in run, beside mosquitto's peak in its naive-subscriber run."""
    peaks, pss, procs = ours["peak_rss_mib"], ours["peak_pss_mib"], ours["processes"]
    parts = [f"{name} {mib:,.0f} MiB (PSS {pss[name]:,.0f} MiB, {procs[name]} "
             f"process{'es' if procs[name] > 1 else ''})" for name, mib in peaks.items()]
    line = f"{n} vehicles: peak RSS " + ", ".join(parts)
    naive = next((r for r in case_rows if "naive" in r["case"]), None)
    if naive and naive.get("peak_rss_mib", {}).get("mosquitto") and "broker" in peaks:
        mosq = naive["peak_rss_mib"]["mosquitto"]
        line += f"; broker = {peaks['broker'] / mosq:.1f}× mosquitto's {mosq:,.1f} MiB with the same vehicles"
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vehicles", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--messages-total", type=int, default=20000, help="messages per case, split over vehicles")
    parser.add_argument("--quick", action="store_true", help="20 and 100 vehicles, 2,000 messages; not stored")
    args = parser.parse_args(argv)
    if args.quick:
        args.vehicles, args.messages_total = [20, 100], 2000
    binary, note = mosquitto.ensure_installed(say)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        stack = _stack(Path(tmp))
        try:
            all_rows = []
            for n in args.vehicles:
                all_rows += run_case(stack, n, max(1, args.messages_total // n), binary)
        finally:
            stack.stop("benchmark finished")
    table, summary = [], []
    for n in args.vehicles:
        case_rows = [r for r in all_rows if r["vehicles"] == n]
        naive = next((r for r in case_rows if "naive" in r["case"]), None)
        for r in case_rows:
            ratio = round(r["per_s"] / naive["per_s"], 2) if naive and naive["per_s"] else None
            table.append([n, r["case"], r["offered"], r["stored"], r["per_s"], ratio, r["p50"], r["p99"], r["lost"]])
        ours = case_rows[0]
        batched = next((r for r in case_rows if "batched" in r["case"]), None)
        if naive and batched:
            summary.append(f"{n} vehicles: the stand-in stores {ours['per_s']:,.0f} rows/s = "
                           f"{ours['per_s'] / batched['per_s']:.2f}× mosquitto + the batched subscriber "
                           f"(target ≥ 1×) and {ours['per_s'] / naive['per_s']:.2f}× the naive one, "
                           f"lost {ours['lost']}")
        summary.append(_memory_line(n, ours, case_rows))
    notes = [f"mosquitto: {note}" + (f" ({mosquitto.version(binary)})" if binary else " — baseline rows skipped"),
             "mosquitto runs with max_queued_messages 0: its default (1000) drops QoS 1 messages it has already "
             "acknowledged when a subscriber falls behind.",
             "Latency: stand-in = publish → PUBACK, which it sends on receipt (as EMQX does), before the row is "
             "written; baselines = device timestamp → the subscriber's commit. rows/s: stored rows over the time "
             "until the last was written, for every case (the stand-in's: its stored count, read every 10 ms once "
             "the load has ended, through the broker's actions and the worker's drain of the telemetry queue).",
             "Peak RSS: summed resident memory of each component's process tree (server main process + workers, "
             "postmaster + backends; shared pages counted in every process), sampled every 0.25 s during the load; PSS "
             "divides shared pages among the processes sharing them (PostgreSQL's shared buffers count once).",
             "Publishers: paho-mqtt clients driven by 2 processes, 10 messages in flight per vehicle, on the same "
             "2-core machine as broker and database (everything competes for the same cores)."]
    if args.quick:
        for row in table:
            report.say(" | ".join(str(c) for c in row))
        report.say("quick run: results not stored")
        return
    report.write("ingest_e2e", "End-to-end ingest: vehicles → broker → PostgreSQL",
                 ["vehicles", "path", "offered", "stored", "rows/s", "× naive", "p50 ms", "p99 ms", "lost"],
                 table, summary, notes, raw={"rows": all_rows})


if __name__ == "__main__":
    main()
