"""Benchmark: the VDA 5050 inbox against our own protocol's status and telemetry inboxes, in one run.

A VDA 5050 ``state`` costs more than our own messages: the trigger (sql/code/26_vda5050.sql) validates every state
against the official JSON schema in PL/pgSQL, then translates it into a status report *and* a telemetry point and
hands both to the same handlers our own inboxes use. This measures what that costs per message.

Starts an embedded PostgreSQL (the project's own launcher, no other component) in a temporary directory, creates a
handful of active VDA vehicles (``vehicles`` + ``vda5050_vehicles`` rows, as ``POST /api/v1/vehicles`` with
``vda5050`` leaves them) and as many vehicles of our own protocol, then stores fresh, valid messages three ways,
each as the broker's role fleet_ingest does it — the prepared ``INSERT INTO ingest.<x>_inbox …`` executed once per
message, ``--batch`` executions per round trip and transaction (emqx/emqx.conf runs ``vda5050_ingest`` and
``status_ingest`` with ``batch_size = 1``, so that is the default; the same batch for all three keeps it fair):

* ``vda5050_state`` — a realistic state of a vehicle driving an order: three nodeStates, two edgeStates, two
  actionStates, velocity, battery, safety, agvPosition, no errors. Becomes one vehicle_status row and one
  telemetry row. (Its orderId is not one of ours, so no mission event follows: that is the mission inbox's cost
  under our protocol, not compared here.)
* ``schema_only`` — of the state's cost, the JSON schema check alone (``ingest.vda5050_schema_problem`` on the
  same kind of state, as the owner: the broker's role may not call it), to show where the time goes.
* ``status`` — our status report with the same content (mode, battery, charging, e-stop, no errors).
* ``telemetry`` — our telemetry point with the same content (position, heading, speed, battery).

The equivalent of one VDA state in our protocol is one status plus one telemetry message, so the headline ratio is
VDA state / (status + telemetry). Reports wall-clock µs per message and CPU µs per message (the server backend +
this client, from /proc; meaningful when other work shares the machine), and checks that every message was applied
(rows in vehicle_status and telemetry, nothing rejected or parked), so a fast rejection path cannot pass for speed.
Writes bench/results/vda5050_ingest.json (and docs/BENCHMARKS.md, via bench/report.py).
Usage: ``python -m bench.vda5050_ingest [--messages 10000] [--rounds 4] [--vehicles 5] [--batch 1] [--quick]``
(about a minute).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import psycopg2.extras

from bench import report
from bench.stackutil import backend_cpu_s, backend_pid, database_only, drain_telemetry
from fleetctl import dbadmin
from fleetctl.stack import Stack

MANUFACTURER = "BenchAGV"
ORIGIN = (48.1, 11.5)
METHODS = ("vda5050_state", "schema_only", "status", "telemetry")
INBOX = {"vda5050_state": "vda5050_inbox", "status": "status_inbox", "telemetry": "telemetry_inbox"}
# The schema check alone, on the same states, the way apply_vda5050 calls it; a state that does not conform divides
# by zero, so a fast failure cannot pass for a fast check.
SCHEMA_ONLY = ("PREPARE ingest (jsonb) AS SELECT 1 / (reason IS NULL)::int "
               "FROM (SELECT document FROM vda5050_schemas WHERE name = 'state') s, "
               "LATERAL ingest.vda5050_schema_problem($1, s.document, s.document, 'state')")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _b64(document: dict) -> str:
    return base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode()


class Messages:
    """Fresh, valid messages: per vehicle in order (headerId / seq increasing), device time ≈ receive time. The
    same moving vehicle is described in each protocol, so the payloads carry the same facts."""

    def __init__(self, vda_vehicles: list[str], own_vehicles: list[str]) -> None:
        self.vda_vehicles = vda_vehicles
        self.own_vehicles = own_vehicles
        self.n = 0
        self.base_ms = time.time_ns() // 1_000_000 - 3_600_000

    def _next(self, vehicles: list[str]) -> tuple[str, int, int, float]:
        self.n += 1
        return vehicles[self.n % len(vehicles)], self.n, self.base_ms + self.n, (self.n % 500) / 10

    def take(self, method: str, count: int) -> list[tuple]:
        """``count`` rows (clientid, topic, payload_b64, received_at_ms) for ``method``'s inbox."""
        return [getattr(self, method)() for _ in range(count)]

    def vda5050_state(self) -> tuple:
        vid, n, ts, x = self._next(self.vda_vehicles)
        serial = _serial(vid)
        order = f"order-{n // 50}"
        node = n % 50
        state = {
            "headerId": n, "timestamp": _iso(ts), "version": "2.0.0", "manufacturer": MANUFACTURER,
            "serialNumber": serial, "orderId": order, "orderUpdateId": 0, "lastNodeId": f"n{node}",
            "lastNodeSequenceId": 2 * node,
            "nodeStates": [{"nodeId": f"n{node + i}", "sequenceId": 2 * (node + i), "released": True,
                            "nodePosition": {"x": x + 5 * i, "y": 2.0, "mapId": "site"}} for i in (1, 2, 3)],
            "edgeStates": [{"edgeId": f"e{node + i}", "sequenceId": 2 * (node + i) + 1, "released": True}
                           for i in (0, 1)],
            "driving": True,
            "actionStates": [{"actionId": f"{order}-pick", "actionType": "pick", "actionStatus": "FINISHED"},
                             {"actionId": f"{order}-drop", "actionType": "drop", "actionStatus": "WAITING"}],
            "operatingMode": "AUTOMATIC", "errors": [], "information": [],
            "batteryState": {"batteryCharge": 80.0, "charging": False},
            "safetyState": {"eStop": "NONE", "fieldViolation": False},
            "velocity": {"vx": 1.2, "vy": 0.0, "omega": 0.0},
            "agvPosition": {"x": x, "y": 2.0, "theta": 0.0, "mapId": "site", "positionInitialized": True},
        }
        return vid, f"uagv/v2/{MANUFACTURER}/{serial}/state", _b64(state), ts + 40

    def _envelope(self, kind: str, data: dict) -> tuple:
        vid, n, ts, _ = self._next(self.own_vehicles)
        envelope = {"v": 1, "msg_id": str(uuid.uuid4()), "seq": n, "ts": ts, "data": data}
        return vid, f"fleet/v1/{vid}/{kind}", _b64(envelope), ts + 40

    def schema_only(self) -> tuple:
        return (base64.b64decode(self.vda5050_state()[2]).decode(),)

    def status(self) -> tuple:
        return self._envelope("status", {"mode": "AUTO", "battery_pct": 80.0, "charging": False, "estop": False,
                                         "errors": []})

    def telemetry(self) -> tuple:
        x = (self.n % 500) / 10
        return self._envelope("telemetry", {"lat": ORIGIN[0] + 2.0 / 111_195, "lon": ORIGIN[1] + x / 74_000,
                                            "heading_deg": 90.0, "speed_mps": 1.2, "battery_pct": 80.0})


def _serial(vehicle_id: str) -> str:
    return "SN-" + vehicle_id.rsplit("-", 1)[1]


def run(messages: int, vehicles: int, rounds: int, batch: int) -> dict:
    with database_only(durable=False) as stack:
        return _measure(stack, messages, vehicles, rounds, batch)


def _provision(app, n: int) -> tuple[list[str], list[str]]:
    """``n`` active VDA vehicles and ``n`` active vehicles of our own protocol, as after registration."""
    vda = [f"vda-{i:03d}" for i in range(n)]
    own = [f"own-{i:03d}" for i in range(n)]
    with app.cursor() as cur:
        cur.execute("INSERT INTO fleets (id, name) VALUES ('bench', 'Benchmark')")
        psycopg2.extras.execute_values(
            cur, "INSERT INTO vehicles (id, fleet_id, status, registered_at) VALUES %s",
            [(vid, "bench", "active", datetime.now(UTC)) for vid in vda + own])
        psycopg2.extras.execute_values(
            cur, "INSERT INTO vda5050_vehicles (vehicle_id, manufacturer, serial_number, map_id, origin_lat, "
                 "origin_lon) VALUES %s", [(vid, MANUFACTURER, _serial(vid), "site", *ORIGIN) for vid in vda])
    return vda, own


def _count(app, sql: str, params: tuple = ()) -> int:
    with app.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def _measure(stack: Stack, total: int, n_vehicles: int, rounds: int, batch: int) -> dict:
    app = psycopg2.connect(stack.database_url)
    app.autocommit = True
    vda_ids, own_ids = _provision(app, n_vehicles)
    with app.cursor() as cur:
        cur.execute("SHOW server_version")
        server_version = cur.fetchone()[0]
    ingest_url = stack.postgres.url(dbadmin.INGEST_ROLE, stack.secrets["FLEET_INGEST_DB_PASSWORD"], dbadmin.DATABASE)
    conns, cursors, pids = {}, {}, {}
    for name in METHODS:  # one connection each, so each method's server CPU is its own backend's
        # the schema check alone is not something the broker may call: it runs as the owner
        conns[name] = psycopg2.connect(stack.database_url if name == "schema_only" else ingest_url)
        conns[name].autocommit = True  # a multi-statement round trip is one implicit transaction, as under EMQX
        cursors[name] = conns[name].cursor()
        cursors[name].execute(SCHEMA_ONLY if name == "schema_only" else
                              f"PREPARE ingest (text, text, text, bigint) AS INSERT INTO ingest.{INBOX[name]} "  # noqa: S608
                              "(clientid, topic, payload_b64, received_at_ms) VALUES ($1, $2, $3, $4)")
        pids[name] = backend_pid(conns[name])
    messages = Messages(vda_ids, own_ids)
    # telemetry is queued by the broker and applied by the worker's drain (sql/100_telemetry_queue.sql): its cost
    # is both, so the drain's backend is counted with the telemetry method
    drainer = psycopg2.connect(stack.database_url)
    drainer.autocommit = True
    drain_cursor, drain_pid = drainer.cursor(), backend_pid(drainer)

    def store(name: str, rows: list[tuple]) -> None:
        placeholders = ", ".join(["%s"] * len(rows[0]))
        psycopg2.extras.execute_batch(cursors[name], f"EXECUTE ingest ({placeholders})", rows, page_size=batch)
        if name == "telemetry":
            drain_telemetry(drain_cursor)

    sent = dict.fromkeys(METHODS, 0)
    for name in METHODS:  # warm-up: compile the functions, cache plans (counted in the check below)
        store(name, messages.take(name, 50))
        sent[name] += 50
    per_round = max(batch, total // rounds // batch * batch)
    elapsed = dict.fromkeys(METHODS, 0.0)
    cpu = dict.fromkeys(METHODS, 0.0)  # server backend + this client process
    server_cpu = dict.fromkeys(METHODS, 0.0)
    measured = dict.fromkeys(METHODS, 0)
    for r in range(rounds):
        for name in METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]:  # rotate the order between rounds
            rows = messages.take(name, per_round)  # built before the clock starts: the database path, not Python
            drain_before = backend_cpu_s(drain_pid)
            server_before, client_before = backend_cpu_s(pids[name]), time.process_time()
            started = time.perf_counter()
            store(name, rows)
            elapsed[name] += time.perf_counter() - started
            server = backend_cpu_s(pids[name]) - server_before + backend_cpu_s(drain_pid) - drain_before
            server_cpu[name] += server
            cpu[name] += server + time.process_time() - client_before
            measured[name] += per_round
            sent[name] += per_round

    # every message applied: one status row per state and status report, one telemetry row per state and point
    statuses, points = ("SELECT count(*) FROM vehicle_status WHERE vehicle_id LIKE %s",
                        "SELECT count(*) FROM telemetry WHERE vehicle_id LIKE %s")
    applied = {"vda5050_state": (_count(app, statuses, ("vda-%",)), _count(app, points, ("vda-%",))),
               "status": _count(app, statuses, ("own-%",)), "telemetry": _count(app, points, ("own-%",))}
    rejected = _count(app, "SELECT count(*) FROM rejected_messages")
    parked = _count(app, "SELECT count(*) FROM ingest.parked")
    for conn in conns.values():
        conn.close()
    drainer.close()
    app.close()
    expected = {"vda5050_state": (sent["vda5050_state"], sent["vda5050_state"]), "status": sent["status"],
                "telemetry": sent["telemetry"]}
    if rejected or parked or applied != expected:
        raise RuntimeError(f"not every message was applied (rejected {rejected}, parked {parked}, rows {applied}, "
                           f"expected {expected}): the comparison would be meaningless")

    def us(seconds: dict) -> dict:
        return {k: round(seconds[k] / measured[k] * 1e6, 1) for k in METHODS}

    wall_us, cpu_us, server_us = us(elapsed), us(cpu), us(server_cpu)
    pair = {"wall": wall_us["status"] + wall_us["telemetry"], "cpu": cpu_us["status"] + cpu_us["telemetry"],
            "server": server_us["status"] + server_us["telemetry"]}
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "postgres": server_version, "batch": batch, "vehicles_per_protocol": n_vehicles, "rounds": rounds,
        "messages_per_method": measured, "seconds": {k: round(v, 3) for k, v in elapsed.items()},
        "wall_us_per_message": wall_us, "cpu_us_per_message": cpu_us, "server_cpu_us_per_message": server_us,
        "status_plus_telemetry_us": {k: round(v, 1) for k, v in pair.items()},
        "ratios": {
            "vda_vs_status_plus_telemetry_cpu": round(cpu_us["vda5050_state"] / pair["cpu"], 2),
            "vda_vs_status_plus_telemetry_wall": round(wall_us["vda5050_state"] / pair["wall"], 2),
            "vda_vs_status_plus_telemetry_server_cpu": round(server_us["vda5050_state"] / pair["server"], 2),
            "vda_vs_status_cpu": round(cpu_us["vda5050_state"] / cpu_us["status"], 2),
            "vda_vs_telemetry_cpu": round(cpu_us["vda5050_state"] / cpu_us["telemetry"], 2),
            "schema_check_share_of_vda_server_cpu": round(server_us["schema_only"] / server_us["vda5050_state"], 2),
        },
        "applied": {"vehicle_status_vda": applied["vda5050_state"][0], "telemetry_vda": applied["vda5050_state"][1],
                    "vehicle_status_own": applied["status"], "telemetry_own": applied["telemetry"],
                    "rejected": rejected, "parked": parked},
        "state_payload_bytes": len(base64.b64decode(Messages(["vda-000"], ["own-000"]).vda5050_state()[2])),
        "load_average": os.getloadavg(),
    }


LABELS = {"vda5050_state": "VDA 5050 state → ingest.vda5050_inbox (schema-validated → status + telemetry)",
          "schema_only": "of which: the JSON schema check alone (ingest.vda5050_schema_problem, same states)",
          "status": "baseline: our status report → ingest.status_inbox",
          "telemetry": "baseline: our telemetry point → ingest.telemetry_inbox (queue) + the worker's drain"}


def _store(result: dict) -> Path:
    """bench/results/vda5050_ingest.json in the harness format (bench/report.py), which also regenerates
    docs/BENCHMARKS.md."""
    wall, cpu, server = (result["wall_us_per_message"], result["cpu_us_per_message"],
                         result["server_cpu_us_per_message"])
    pair, ratios = result["status_plus_telemetry_us"], result["ratios"]
    rows = [[LABELS[name], result["messages_per_method"][name], wall[name], cpu[name], server[name]]
            for name in METHODS]
    rows.append(["baseline: status + telemetry (what one VDA state says in our protocol)",
                 None, pair["wall"], pair["cpu"], pair["server"]])
    summary = [
        f"One VDA 5050 state costs {cpu['vda5050_state']:,.0f} µs CPU (server + client) and "
        f"{wall['vda5050_state']:,.0f} µs wall: {ratios['vda_vs_status_plus_telemetry_cpu']:.1f}× by CPU and "
        f"{ratios['vda_vs_status_plus_telemetry_wall']:.1f}× by wall of the status report + telemetry point that say "
        f"the same in our protocol ({ratios['vda_vs_status_plus_telemetry_server_cpu']:.1f}× by server CPU alone).",
        f"Against a single message of ours: {ratios['vda_vs_status_cpu']:.1f}× a status report, "
        f"{ratios['vda_vs_telemetry_cpu']:.1f}× a telemetry point (CPU).",
        f"Where it goes: the JSON schema check alone is {ratios['schema_check_share_of_vda_server_cpu']:.0%} of the "
        f"state's server CPU ({server['schema_only']:,.0f} of {server['vda5050_state']:,.0f} µs).",
        f"Every message applied: {result['applied']['vehicle_status_vda']:,} status and "
        f"{result['applied']['telemetry_vda']:,} telemetry rows from VDA states, 0 rejected, 0 parked.",
    ]
    notes = [
        f"{result['vehicles_per_protocol']} VDA vehicles and {result['vehicles_per_protocol']} of our own, "
        f"{result['rounds']} interleaved rounds, {result['batch']} message(s) per round trip and transaction "
        f"(emqx.conf: batch_size = 1 for vda5050_ingest and status_ingest), fsync off (measures the SQL, not the "
        f"disk).",
        f"The state ({result['state_payload_bytes']} bytes of JSON) has 3 nodeStates, 2 edgeStates, 2 actionStates, "
        "velocity and agvPosition; its orderId is none of ours, so no mission event is written.",
        "As role fleet_ingest, a prepared INSERT per message; psycopg2 sends `EXECUTE stmt(…)`, which the server "
        "parses, where EMQX's Bind/Execute does not.",
    ]
    return report.write("vda5050_ingest", "VDA 5050 ingest: per-message cost vs our status and telemetry inboxes",
                        ["message", "messages", "wall µs/msg", "CPU µs/msg", "server CPU µs/msg"], rows, summary,
                        notes, raw=result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10000, help="measured messages per method (default 10000)")
    parser.add_argument("--vehicles", type=int, default=5, help="vehicles per protocol (default 5)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (load spikes hit every method)")
    parser.add_argument("--batch", type=int, default=1, help="messages per round trip (default 1, as emqx.conf)")
    parser.add_argument("--quick", action="store_true", help="small sizes, to prove it works; results not stored")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.vehicles < 1 or args.rounds < 1:
        parser.error("--batch, --vehicles and --rounds must be at least 1")
    if args.quick:
        args.messages, args.rounds = 300, 2
    result = run(args.messages, args.vehicles, args.rounds, args.batch)
    for name in METHODS:
        print(f"{name:<14} {result['wall_us_per_message'][name]:>8.1f} us wall  "
              f"{result['cpu_us_per_message'][name]:>8.1f} us CPU  "
              f"({result['server_cpu_us_per_message'][name]:.1f} server)  per message, "
              f"{result['messages_per_method'][name]} in {result['seconds'][name]:.2f} s")
    pair = result["status_plus_telemetry_us"]
    print(f"{'status+telem.':<14} {pair['wall']:>8.1f} us wall  {pair['cpu']:>8.1f} us CPU  "
          f"({pair['server']:.1f} server)")
    for name, value in result["ratios"].items():
        print(f"{name:<42} {value:.0%}" if "share" in name else f"{name:<42} {value:.2f}x")
    print("applied:", ", ".join(f"{k} {v}" for k, v in result["applied"].items()))
    print(f"load average during the run: {result['load_average'][0]:.2f} on {os.cpu_count()} CPUs")
    if not args.quick:
        print(f"written to {_store(result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
