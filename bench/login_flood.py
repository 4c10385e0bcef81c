"""A flood of logins with random usernames against the api, and what it does to everyone else: the latency of a
normal authenticated request (``GET /api/v1/auth/me``, one keep-alive connection, sequential) while 64 clients, in a
process of their own, send logins as fast as they are answered; as a ratio to the same request without the flood,
measured in the same run.

Two api stacks, one after the other: with the bcrypt gate (``API_LOGIN_CONCURRENCY`` 2, the default) and without it
(a gate of 1,000: every login gets its bcrypt at once, as before api/throttle.py). The failure counters per address
and global are turned off in both (``API_LOGIN_MAX_FAILURES_PER_ADDR=0``, ``_GLOBAL=0``), as for an attacker spread
over many addresses: from one address they would answer 429 after 50 failures without any bcrypt at all.
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import requests

from bench import report
from bench.report import say
from bench.stackutil import start_stack

FLOODERS = 64


def _normal_latencies(url: str, headers: dict, seconds: float) -> list[float]:
    session = requests.Session()
    samples, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        response = session.get(url, headers=headers, timeout=60)
        samples.append((time.perf_counter() - started) * 1000.0)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
    return samples


def _flood(url: str, stop, results) -> None:
    """In a process of its own (the measuring process keeps its interpreter to itself): FLOODERS threads sending
    logins until ``stop``; the count of answers by status goes to ``results``."""
    statuses: Counter = Counter()

    def one_client() -> None:
        session = requests.Session()
        while not stop.is_set():
            response = session.post(url, timeout=60, json={"username": "spray-" + uuid.uuid4().hex[:10],
                                                           "password": "Winter2026!"})
            statuses[response.status_code] += 1
    threads = [threading.Thread(target=one_client) for _ in range(FLOODERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(dict(statuses))


def measure(gate: int, seconds: float) -> dict:
    env = {"API_LOGIN_CONCURRENCY": str(gate), "API_LOGIN_MAX_FAILURES_PER_ADDR": "0",
           "API_LOGIN_MAX_FAILURES_GLOBAL": "0"}
    with tempfile.TemporaryDirectory(prefix="bench-login-flood-") as tmp:
        stack = start_stack(Path(tmp), ("api",), env)
        try:
            api = stack.url("api")
            login = requests.post(f"{api}/api/v1/auth/login", timeout=30,
                                  json={"username": "admin", "password": stack.secrets["FLEET_ADMIN_PASSWORD"]})
            login.raise_for_status()
            headers = {"Authorization": "Bearer " + login.json()["access_token"]}
            quiet = _normal_latencies(f"{api}/api/v1/auth/me", headers, seconds)
            stop, results = multiprocessing.Event(), multiprocessing.Queue()
            flooder = multiprocessing.Process(target=_flood, args=(f"{api}/api/v1/auth/login", stop, results))
            flooder.start()
            time.sleep(1.0)   # let the flood build up before measuring under it
            flooded = _normal_latencies(f"{api}/api/v1/auth/me", headers, seconds)
            stop.set()
            statuses = results.get(timeout=120)
            flooder.join()
        finally:
            stack.stop("benchmark finished")
    return {"gate": gate, "quiet_p50_ms": round(statistics.median(quiet), 2),
            "flood_p50_ms": round(statistics.median(flooded), 2),
            "flood_p95_ms": round(sorted(flooded)[int(0.95 * (len(flooded) - 1))], 2),
            "ratio": round(statistics.median(flooded) / statistics.median(quiet), 1),
            "normal_requests": len(flooded), "logins": statuses}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, to prove the benchmark works")
    args = parser.parse_args(argv)
    seconds = 3.0 if args.quick else 10.0
    results = []
    for gate, label in ((2, "bcrypt gate of 2 (default)"), (1000, "no gate (as before)")):
        say(f"login_flood: {label}: {seconds:.0f} s quiet, then {seconds:.0f} s under {FLOODERS} flooding clients")
        results.append({"label": label, **measure(gate, seconds)})
    rows = [[r["label"], r["quiet_p50_ms"], r["flood_p50_ms"], r["flood_p95_ms"], r["ratio"], r["normal_requests"],
             r["logins"].get(401, 0), r["logins"].get(503, 0)] for r in results]
    summary = [f"{r['label']}: GET /auth/me p50 {r['quiet_p50_ms']:,.1f} ms quiet, {r['flood_p50_ms']:,.1f} ms under "
               f"the flood ({r['ratio']}×)" for r in results]
    notes = [f"{FLOODERS} clients each sending the next login as soon as the last was answered, random usernames "
             "(each an unknown user: a bcrypt against the dummy hash); per-address and global failure limits off",
             "normal request: GET /api/v1/auth/me with an admin token on one keep-alive connection, sequential",
             "logins 401: password checked (a bcrypt each); 503: refused by the gate (login_busy) without one",
             "with the gate what is left is the cost of answering hundreds of requests a second (here 503s) on a "
             "shared 2-core machine, as for a flood of any request: limit requests per address at the proxy"]
    report.write("login_flood", "Login flood: normal API latency while 64 clients spray logins",
                 ["api", "quiet p50 ms", "flood p50 ms", "flood p95 ms", "× quiet", "normal requests",
                  "logins 401", "logins 503"], rows, summary, notes, raw={"results": results, "quick": args.quick})


if __name__ == "__main__":
    main()
