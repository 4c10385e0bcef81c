"""Benchmark: the SQL ingest path against a plain multi-row insert and COPY of the same rows, in one run.

Starts an embedded PostgreSQL (the project's own launcher, no other component) in a temporary directory, creates
active vehicles, then stores telemetry four ways, each with fresh messages:

* ``ingest_prepared`` — what EMQX's pgsql action does with ``batch_size = 100``: the prepared
  ``INSERT INTO ingest.telemetry_inbox …`` executed once per message (Bind/Execute), 100 executions per round trip
  and transaction, as role fleet_ingest — asyncpg's ``executemany``, as the stand-in's pgsql action runs it and as
  EMQX's ``epgsql:execute_batch`` does — and what the worker then does with the queue: ``ingest.drain_telemetry()``
  after every ``DRAIN_EVERY`` batches (sets of 200, about what the worker's 20 ms poll finds at 10,000 messages/s;
  under a backlog the sets grow to 1,000 and get cheaper per message). Every message is base64-decoded, validated,
  deduplicated, moves the latest state and is stored; time and CPU include both the broker's inserts and the
  drains (two backends).
* ``ingest_multirow`` — the same queue, 100 rows per ``INSERT … VALUES`` statement, drained the same way.
* ``plain_multirow`` — the already-parsed rows straight into ``telemetry``, 100 per statement, no checks.
* ``copy`` — the parsed rows into ``telemetry`` with ``COPY``.

Prints rows/s and the ratios, and writes bench/results/sql_ingest.json (and docs/BENCHMARKS.md, via
bench/report.py). Target (issue 15): ingest ≥ 70 % of the plain multi-row insert (aim: 90 %). Besides
wall-clock rows/s it reports CPU time per row (server backend + this client, from /proc), which stays meaningful
when other work shares the machine.
Usage: ``python -m bench.sql_ingest [--rows 40000] [--rounds 5] [--vehicles 200] [--durable] [--quick]``
(about 15 s).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import psycopg2
import psycopg2.extras

from bench import report
from bench.stackutil import backend_cpu_s, backend_pid, database_only, drain_telemetry
from fleetctl import dbadmin
from fleetctl.stack import Stack

BATCH = 100
DRAIN_EVERY = 2   # broker batches between two drains
INBOX_SQL = "INSERT INTO ingest.telemetry_inbox (clientid, topic, payload_b64, received_at_ms) VALUES "
PLAIN_COLUMNS = "vehicle_id, ts, received_at, seq, msg_id, lat, lon, heading_deg, speed_mps, battery_pct, odometer_m"



class Messages:
    """Fresh, valid telemetry for a set of vehicles: in order per vehicle, device time ≈ receive time."""

    def __init__(self, vehicles: list[str]) -> None:
        self.vehicles = vehicles
        self.seq = 0
        self.base_ms = time.time_ns() // 1_000_000 - 3_600_000

    def take(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            self.seq += 1
            vid = self.vehicles[self.seq % len(self.vehicles)]
            ts = self.base_ms + self.seq
            out.append({"vehicle_id": vid, "msg_id": str(uuid.uuid4()), "seq": self.seq, "ts": ts,
                        "received_at": ts + 40, "lat": 48.1 + (self.seq % 1000) / 1e5,
                        "lon": 11.5 + (self.seq % 777) / 1e5, "heading_deg": float(self.seq % 360),
                        "speed_mps": 7.5, "battery_pct": 80.0, "odometer_m": 1000.0 + self.seq})
        return out


def _envelope_b64(m: dict) -> str:
    data = {k: m[k] for k in ("lat", "lon", "heading_deg", "speed_mps", "battery_pct", "odometer_m")}
    envelope = {"v": 1, "msg_id": m["msg_id"], "seq": m["seq"], "ts": m["ts"], "data": data}
    return base64.b64encode(json.dumps(envelope, separators=(",", ":")).encode()).decode()


def _inbox_rows(batch: list[dict]) -> list[tuple]:
    return [(m["vehicle_id"], f"fleet/v1/{m['vehicle_id']}/telemetry", _envelope_b64(m), m["received_at"])
            for m in batch]


def _plain_rows(batch: list[dict]) -> list[tuple]:
    def ts(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, UTC)
    return [(m["vehicle_id"], ts(m["ts"]), ts(m["received_at"]), m["seq"], m["msg_id"], m["lat"], m["lon"],
             m["heading_deg"], m["speed_mps"], m["battery_pct"], m["odometer_m"]) for m in batch]


# -- the four ways to store a batch (each batch = one round trip and one transaction) ------------------------
# Each takes the batch already in its wire form (prepare_*), so the timing is the database path, not Python.
class PreparedBatches:
    """The broker's connection: one prepared statement, and a batch as one pipelined round trip of Bind/Execute
    per row in one implicit transaction (asyncpg ``executemany``, atomic) — what ``epgsql:execute_batch`` sends for
    EMQX and what the stand-in's pgsql action sends (emqx/standin/rules/actions/pgsql.py)."""

    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(dsn))
        self.pid = self.loop.run_until_complete(self.conn.fetchval("SELECT pg_backend_pid()"))

    def executemany(self, rows: list[tuple]) -> None:
        self.loop.run_until_complete(self.conn.executemany(INBOX_SQL + "($1, $2, $3, $4)", rows))

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def ingest_prepared(broker: PreparedBatches, rows: list[tuple]) -> None:
    broker.executemany(rows)


def ingest_multirow(cur, rows: list[tuple]) -> None:
    psycopg2.extras.execute_values(cur, INBOX_SQL + "%s", rows, template="(%s, %s, %s, %s::bigint)",
                                   page_size=BATCH)


def plain_multirow(cur, rows: list[tuple]) -> None:
    psycopg2.extras.execute_values(cur, f"INSERT INTO telemetry ({PLAIN_COLUMNS}) VALUES %s",  # noqa: S608 - fixed
                                   rows, page_size=BATCH)


def copy_rows(cur, text: str) -> None:
    cur.copy_expert(f"COPY telemetry ({PLAIN_COLUMNS}) FROM STDIN", io.StringIO(text))


def _copy_text(batch: list[dict]) -> str:
    return "".join("\t".join(v.isoformat() if isinstance(v, datetime) else str(v) for v in row) + "\n"
                   for row in _plain_rows(batch))


METHODS = {"ingest_prepared": ingest_prepared, "ingest_multirow": ingest_multirow,
           "plain_multirow": plain_multirow, "copy": copy_rows}
PREPARE = {"ingest_prepared": _inbox_rows, "ingest_multirow": _inbox_rows, "plain_multirow": _plain_rows,
           "copy": _copy_text}


def run(rows: int, vehicles: int, rounds: int, durable: bool) -> dict:
    with database_only(durable) as stack:
        return _measure(stack, rows, vehicles, rounds, durable)


def _measure(stack: Stack, rows: int, n_vehicles: int, rounds: int, durable: bool) -> dict:
    app = psycopg2.connect(stack.database_url)
    app.autocommit = True
    ingest = psycopg2.connect(stack.postgres.url(dbadmin.INGEST_ROLE, stack.secrets["FLEET_INGEST_DB_PASSWORD"],
                                                 dbadmin.DATABASE))
    ingest.autocommit = True  # a multi-statement round trip is then one implicit transaction, as under EMQX
    with app.cursor() as cur:
        cur.execute("INSERT INTO fleets (id, name) VALUES ('bench', 'Benchmark')")
        vehicle_ids = [f"bench-{i:05d}" for i in range(n_vehicles)]
        psycopg2.extras.execute_values(cur, "INSERT INTO vehicles (id, fleet_id, status) VALUES %s",
                                       [(vid, "bench", "active") for vid in vehicle_ids])
        cur.execute("SHOW server_version")
        server_version = cur.fetchone()[0]
    broker = PreparedBatches(stack.postgres.url(dbadmin.INGEST_ROLE, stack.secrets["FLEET_INGEST_DB_PASSWORD"],
                                                dbadmin.DATABASE))
    messages = Messages(vehicle_ids)
    cursors: dict[str, object] = {name: (ingest if name.startswith("ingest") else app).cursor() for name in METHODS}
    cursors["ingest_prepared"] = broker
    pids = {name: backend_pid(ingest if name.startswith("ingest") else app) for name in METHODS}
    pids["ingest_prepared"] = broker.pid

    app_pid = backend_pid(app)
    drain_cursor = app.cursor()
    drained = {"taken": 0, "in_sets": 0, "one_by_one": 0}

    def drain() -> None:
        """The worker's part: apply everything queued."""
        for key, value in drain_telemetry(drain_cursor).items():
            drained[key] += value

    for name, method in METHODS.items():  # warm-up: compile functions, cache plans
        method(cursors[name], PREPARE[name](messages.take(BATCH)))
    drain()
    drained.update(taken=0, in_sets=0, one_by_one=0)
    per_round = max(BATCH, rows // rounds // BATCH * BATCH)
    elapsed = dict.fromkeys(METHODS, 0.0)
    cpu = dict.fromkeys(METHODS, 0.0)  # server backend + this client process: robust on a busy machine
    stored = dict.fromkeys(METHODS, 0)
    names = list(METHODS)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order between rounds
            work = [PREPARE[name](messages.take(BATCH)) for _ in range(per_round // BATCH)]
            queued = name.startswith("ingest")
            cpu_before = backend_cpu_s(pids[name]) + (backend_cpu_s(app_pid) if queued else 0.0) \
                + time.process_time()
            started = time.perf_counter()
            for i, batch in enumerate(work, start=1):
                METHODS[name](cursors[name], batch)
                if queued and i % DRAIN_EVERY == 0:
                    drain()
            if queued:
                drain()
            elapsed[name] += time.perf_counter() - started
            cpu[name] += backend_cpu_s(pids[name]) + (backend_cpu_s(app_pid) if queued else 0.0) \
                + time.process_time() - cpu_before
            stored[name] += per_round

    with app.cursor() as cur:
        cur.execute("SELECT count(*) FROM rejected_messages")
        rejected = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM telemetry")
        telemetry_rows = cur.fetchone()[0]
    app.close()
    ingest.close()
    broker.close()
    if rejected:
        raise RuntimeError(f"{rejected} benchmark messages were rejected; the comparison would be meaningless")
    if drained["one_by_one"]:
        raise RuntimeError(f"{drained['one_by_one']} plain points left the set path; the comparison would not be "
                           "of the set path")
    rate = {name: stored[name] / elapsed[name] for name in METHODS}
    cpu_rate = {name: stored[name] / cpu[name] if cpu[name] else 0.0 for name in METHODS}
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "postgres": server_version},
        "durable": durable, "batch_size": BATCH, "vehicles": n_vehicles, "rounds": rounds,
        "rows_per_method": stored, "seconds": {k: round(v, 3) for k, v in elapsed.items()},
        "rows_per_second": {k: round(v) for k, v in rate.items()},
        "cpu_us_per_row": {k: round(cpu[k] / stored[k] * 1e6, 1) for k in METHODS},
        "cpu_ratios": {
            "ingest_prepared_vs_plain_multirow": round(cpu_rate["ingest_prepared"] / cpu_rate["plain_multirow"], 3),
            "ingest_prepared_vs_copy": round(cpu_rate["ingest_prepared"] / cpu_rate["copy"], 3),
        },
        "load_average": os.getloadavg(),
        "ratios": {
            "ingest_prepared_vs_plain_multirow": round(rate["ingest_prepared"] / rate["plain_multirow"], 3),
            "ingest_prepared_vs_copy": round(rate["ingest_prepared"] / rate["copy"], 3),
            "ingest_multirow_vs_plain_multirow": round(rate["ingest_multirow"] / rate["plain_multirow"], 3),
            "plain_multirow_vs_copy": round(rate["plain_multirow"] / rate["copy"], 3),
        },
        "target": "ingest_prepared_vs_plain_multirow >= 0.7 (aim 0.9)",
        "drained": drained, "drain_every_batches": DRAIN_EVERY,
        "telemetry_rows_total": telemetry_rows,
    }


LABELS = {"ingest_prepared": "ingest: prepared INSERT per message, 100 per round trip (as EMQX), + the drain",
          "ingest_multirow": "ingest: 100-row INSERT into the queue, + the drain",
          "plain_multirow": "baseline: plain 100-row INSERT into telemetry",
          "copy": "baseline: COPY into telemetry"}


def _store(result: dict) -> Path:
    """bench/results/sql_ingest.json in the harness format (bench/report.py), which also regenerates
    docs/BENCHMARKS.md."""
    plain, copy = result["rows_per_second"]["plain_multirow"], result["rows_per_second"]["copy"]
    rows = [[LABELS[name], result["rows_per_method"][name], result["seconds"][name],
             result["rows_per_second"][name], result["cpu_us_per_row"][name],
             f"{result['rows_per_second'][name] / plain:.0%}", f"{result['rows_per_second'][name] / copy:.0%}"]
            for name in METHODS]
    ratio = result["ratios"]["ingest_prepared_vs_plain_multirow"]
    summary = [
        f"Full ingest path (decode, validate, dedup, latest state, store) as EMQX runs it: "
        f"{ratio:.0%} of the plain multi-row insert ({'meets' if ratio >= 0.7 else 'misses'} the ≥ 70 % target), "
        f"{result['ratios']['ingest_prepared_vs_copy']:.0%} of COPY.",
        f"By CPU time (server backend + client, robust on a shared machine): "
        f"{result['cpu_ratios']['ingest_prepared_vs_plain_multirow']:.0%} of the plain multi-row insert.",
    ]
    notes = [
        f"{result['vehicles']} vehicles, {result['rounds']} interleaved rounds, batches of {BATCH}, "
        f"{'fsync on' if result['durable'] else 'fsync off (measures the SQL, not the disk)'}.",
        "The broker's batches are asyncpg `executemany` (Bind/Execute of one prepared statement per row, one round "
        "trip and transaction per 100), as EMQX's `epgsql:execute_batch` and the stand-in send them.",
        "The baselines insert rows that are already parsed; the ingest rows are the raw base64 payloads.",
        f"The ingest rows include the worker's part: `ingest.drain_telemetry()` after every {DRAIN_EVERY} broker "
        f"batches (sets of {DRAIN_EVERY * BATCH}), on a second backend whose CPU time is counted too; all "
        f"{result['drained']['in_sets']:,} measured messages took the set path.",
    ]
    return report.write("sql_ingest", "SQL ingest path: telemetry queue + drain vs plain multi-row insert vs COPY",
                        ["method", "rows", "s", "rows/s", "CPU µs/row", "vs plain", "vs COPY"], rows, summary,
                        notes, raw=result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=40000, help="messages per method (default 40000)")
    parser.add_argument("--vehicles", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (load spikes hit every method)")
    parser.add_argument("--durable", action="store_true", help="fsync on (default: off, measures SQL cost)")
    parser.add_argument("--quick", action="store_true", help="small sizes, to prove it works; results not stored")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.rounds = 1000, 2
    result = run(args.rows, args.vehicles, args.rounds, args.durable)
    for name, value in result["rows_per_second"].items():
        print(f"{name:<18} {value:>9,} rows/s  ({result['rows_per_method'][name]} rows in "
              f"{result['seconds'][name]:.2f} s)")
    for name, value in result["ratios"].items():
        print(f"{name:<36} {value:.1%}")
    print("CPU (server backend + client) per row:",
          ", ".join(f"{k} {v} us" for k, v in result["cpu_us_per_row"].items()))
    for name, value in result["cpu_ratios"].items():
        print(f"by CPU time: {name:<36} {value:.1%}")
    print(f"load average during the run: {result['load_average'][0]:.2f} on {result['machine']['cpus']} CPUs")
    if not args.quick:
        print(f"written to {_store(result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
