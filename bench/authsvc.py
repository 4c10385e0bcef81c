"""authsvc: MQTT authn and authz decisions per second and p50/p99 through the production server (granian,
``python -m authsvc.server``), driven by wrk over keep-alive connections as the broker does — and the same
load against the server it replaced (gunicorn gthread, ``bench/gunicorn_authsvc.py``) on the same database in
the same run, also with 200 half-sent requests held open (slowloris).

Baselines measured in the same run:
* the previous server, case by case (the "× previous" column);
* each server's ``GET /healthz`` (Flask routing + one database ping: the server's floor);
* in-process, the device-secret check (HMAC-SHA-256 + constant-time compare, what authn does per CONNECT)
  beside one bcrypt operator-password check (``api.auth.check_password``, what a login costs).

Targets: authn ≥ 2,000/s, authz ≥ 5,000/s, p99 < 10 ms (on the production server).
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from bench import report, wrk
from bench.fleet import free_port, provision_vehicles
from bench.report import say
from bench.stackutil import cpu_seconds, start_stack
from fleetcore import credentials, paths, topics

TARGETS = {"authn": (2000, 10.0), "authz": (5000, 10.0)}
CURRENT, PREVIOUS = "granian", "gunicorn gthread"
HALF_SENT = 200


def authn_bodies(creds: list[tuple[str, str]]) -> list[str]:
    return [json.dumps({"clientid": vid, "username": vid, "password": secret, "peerhost": "127.0.0.1"})
            for vid, secret in creds]


def authz_bodies(creds: list[tuple[str, str]]) -> list[str]:
    """What the broker asks: each vehicle publishing its telemetry and subscribing to its cmd topic (all allow)."""
    bodies = []
    for vid, _ in creds:
        for kind, action in ((topics.Kind.TELEMETRY, "publish"), (topics.Kind.CMD, "subscribe")):
            bodies.append(json.dumps({"clientid": vid, "username": vid, "topic": topics.vehicle_topic(vid, kind),
                                      "action": action, "qos": "1", "retain": "false", "role": "vehicle"}))
    return bodies


def time_per_call(fn, min_seconds: float, min_calls: int = 3) -> dict:
    """Median seconds per call of ``fn`` over batches, for at least ``min_seconds``."""
    samples, calls, started = [], 0, time.perf_counter()
    batch = 1
    while calls < min_calls or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        elapsed = time.perf_counter() - t0
        samples.append(elapsed / batch)
        calls += batch
        if elapsed < 0.01:
            batch *= 2
    return {"calls": calls, "seconds_per_call": statistics.median(samples)}


def credential_checks(key: str, secret: str, seconds: float) -> dict:
    """HMAC device-secret check vs one bcrypt operator-password check (the api's own functions)."""
    from api.auth import check_password, hash_password  # the operator login path
    from api.passwords import DEFAULT_HASH_COST
    stored = credentials.keyed_hash(key, secret)
    hmac_check = time_per_call(lambda: credentials.matches(key, secret, stored), seconds)
    password_hash = hash_password("correct horse battery staple", DEFAULT_HASH_COST)
    bcrypt_check = time_per_call(lambda: check_password("correct horse battery staple", password_hash), seconds)
    return {"hmac": hmac_check, "bcrypt": bcrypt_check, "bcrypt_cost": int(password_hash.split("$")[2])}


def in_process_breakdown(env: dict[str, str], authz_body: str, seconds: float) -> dict:
    """Where an authz request's time goes: the decision alone (``acl.decide``) vs the whole Flask app called as
    WSGI in this process (no HTTP server, no socket); the rest of the server's CPU per request is server + HTTP."""
    import io
    import os

    from werkzeug.test import EnvironBuilder

    from authsvc import acl, create_app
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        app = create_app()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    fields = json.loads(authz_body)
    decide = time_per_call(lambda: acl.decide(fields["role"], fields["clientid"], fields["username"],
                                              fields["action"], fields["topic"]), seconds)
    base = EnvironBuilder(path="/mqtt/authz", method="POST", data=authz_body,
                          headers={"x-fleet-broker-token": env["FLEET_BROKER_TOKEN"],
                                   "Content-Type": "application/json"}).get_environ()
    raw = authz_body.encode()

    def call() -> None:
        environ = dict(base)
        environ["wsgi.input"] = io.BytesIO(raw)
        b"".join(app.wsgi_app(environ, lambda status, headers, exc_info=None: None))

    flask_app = time_per_call(call, seconds)
    return {"acl_decide": decide, "flask_app": flask_app}


@contextmanager
def previous_server(env: dict[str, str], log_path: Path):
    """authsvc under the server it ran on before (bench/gunicorn_authsvc.py), on a free port: its URL and PID."""
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:bench.gunicorn_authsvc", "authsvc:create_app()"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, env=env | {"AUTHSVC_BIND": f"127.0.0.1:{port}"}, cwd=paths.PROJECT_ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):  # noqa: S310 - loopback
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not start: see {log_path}") from None
                time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def half_sent_requests(url: str, count: int):
    """``count`` connections that each send the start of a request head and then nothing (slowloris)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"POST /mqtt/authz HTTP/1.1\r\nHost: authsvc\r\nContent-Type: application/json\r\n")
            sockets.append(sock)
        yield
    finally:
        for sock in sockets:
            sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, to prove the benchmark works")
    parser.add_argument("--seconds", type=float, default=None, help="wrk duration per endpoint")
    parser.add_argument("--vehicles", type=int, default=None)
    parser.add_argument("--connections", type=int, default=8,
                        help="keep-alive connections; 8 = the broker's pool_size for authn and for authz (emqx.conf)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    n_vehicles = args.vehicles or (50 if args.quick else 1000)
    binary, tool_note = wrk.ensure_installed(say)
    say(f"authsvc: {tool_note}")
    with tempfile.TemporaryDirectory(prefix="bench-authsvc-") as tmp:
        stack = start_stack(Path(tmp), ("authsvc",))
        try:
            key = stack.secrets["FLEET_DEVICE_SECRET_KEY"]
            creds = provision_vehicles(stack.database_url, key, "authb-", n_vehicles)
            broker_headers = {"x-fleet-broker-token": stack.secrets["FLEET_BROKER_TOKEN"]}
            cases = [("healthz", "healthz (Flask + one DB ping: the server's floor)", "GET", "/healthz", None),
                     ("authn", "authn: device secret (1 DB round trip + HMAC)", "POST", "/mqtt/authn",
                      authn_bodies(creds)),
                     ("authz", "authz: own topics (pure CPU)", "POST", "/mqtt/authz", authz_bodies(creds)),
                     ("authz+slowloris", f"authz with {HALF_SENT} half-sent requests held open", "POST",
                      "/mqtt/authz", authz_bodies(creds))]
            with previous_server(stack.component("authsvc").env, Path(tmp) / "gunicorn.log") as (old_url, old_pid):
                servers = {CURRENT: (stack.url("authsvc"), stack.component("authsvc").process.pid),
                           PREVIOUS: (old_url, old_pid)}
                # Warm-up: every worker's database pool and code paths.
                for url, _ in servers.values():
                    for _, _, method, path, bodies in cases[:3]:
                        wrk.run(binary, url + path, method=method, headers=broker_headers, bodies=bodies,
                                seconds=1, connections=args.connections)
                results: dict[tuple[str, str], dict] = {}
                for kind, label, method, path, bodies in cases:   # the two servers back to back, case by case
                    for server, (url, pid) in servers.items():
                        say(f"authsvc: {label} on {server} for {seconds:.0f} s")
                        with half_sent_requests(url, HALF_SENT if kind.endswith("slowloris") else 0):
                            cpu_before = cpu_seconds(pid)
                            result = wrk.run(binary, url + path, method=method, headers=broker_headers,
                                             bodies=bodies, seconds=seconds, connections=args.connections)
                            result["authsvc_cpu_s"] = round(cpu_seconds(pid) - cpu_before, 2)
                        results[kind, server] = result
            breakdown = in_process_breakdown(stack.service_env() | {"FLEET_LOG_LEVEL": "WARNING"},
                                             authz_bodies(creds)[0], 1.0 if args.quick else 3.0)
        finally:
            stack.stop("benchmark finished")
    checks = credential_checks(key, creds[0][1], 1.0 if args.quick else 3.0)

    rows, summary = [], []
    for kind, label, *_ in cases:
        current, previous = results[kind, CURRENT], results[kind, PREVIOUS]
        target = TARGETS.get(kind)
        verdict = target and ("met" if current["per_s"] >= target[0] and current["p99_ms"] < target[1] else "missed")
        versus = round(current["per_s"] / previous["per_s"], 2) if previous["per_s"] else None
        for server, r in ((CURRENT, current), (PREVIOUS, previous)):
            rows.append([label, server, r["per_s"], versus if server == CURRENT else 1.0, r["p50_ms"], r["p99_ms"],
                         r["non2xx"] + r["socket_errors"], round(r["authsvc_cpu_s"] * 1e6 / max(r["requests"], 1), 0),
                         f"≥ {target[0]:,}/s, p99 < {target[1]:.0f} ms: {verdict}" if target and server == CURRENT
                         else "—"])
        if kind != "healthz":
            times = f"{versus:.2f}×" if versus is not None else "∞×"
            summary.append(f"{kind}: {current['per_s']:,.0f}/s on {CURRENT} = {times} {PREVIOUS} "
                           f"({previous['per_s']:,.0f}/s), p50 {current['p50_ms']} ms, p99 {current['p99_ms']} ms"
                           + (f" — target {verdict}" if target else ""))
    hmac_us = checks["hmac"]["seconds_per_call"] * 1e6
    bcrypt_ms = checks["bcrypt"]["seconds_per_call"] * 1e3
    rows.append(["device-secret check in process: HMAC-SHA-256 + compare_digest", "—", round(1e6 / hmac_us, 0),
                 None, round(hmac_us / 1000, 4), None, 0, round(hmac_us, 1), "—"])
    rows.append([f"operator password check in process: bcrypt cost {checks['bcrypt_cost']} (contrast)", "—",
                 round(1000 / bcrypt_ms, 1), None, round(bcrypt_ms, 2), None, 0, round(bcrypt_ms * 1000, 0), "—"])
    decide_us = breakdown["acl_decide"]["seconds_per_call"] * 1e6
    flask_us = breakdown["flask_app"]["seconds_per_call"] * 1e6
    authz = results["authz", CURRENT]
    authz_cpu_us = authz["authsvc_cpu_s"] * 1e6 / max(authz["requests"], 1)
    rows.append(["authz decision alone in process (acl.decide)", "—", round(1e6 / decide_us, 0), None,
                 round(decide_us / 1000, 4), None, 0, round(decide_us, 1), "—"])
    rows.append(["authz through the WSGI app in process (no server, no socket)", "—", round(1e6 / flask_us, 0), None,
                 round(flask_us / 1000, 4), None, 0, round(flask_us, 1), "—"])
    summary.append(f"where an authz request's CPU goes on {CURRENT}: decision {decide_us:.1f} µs, WSGI app around it "
                   f"{flask_us - decide_us:.0f} µs, server + HTTP {max(authz_cpu_us - flask_us, 0):.0f} µs "
                   f"(of {authz_cpu_us:.0f} µs per request in the server): the decision is "
                   f"{100 * decide_us / authz_cpu_us:.1f} % of the cost")
    summary.append(f"one bcrypt operator-password check costs {bcrypt_ms:,.0f} ms = "
                   f"{bcrypt_ms * 1000 / hmac_us:,.0f}× "
                   f"the device-secret HMAC check ({hmac_us:.1f} µs); with bcrypt device secrets a 1,000-vehicle "
                   f"reconnect storm would cost ≈ {bcrypt_ms:,.0f} CPU seconds in authsvc alone")
    notes = [f"load tool: {authz['tool']} ({tool_note}), {args.connections} keep-alive connections (the broker's "
             f"pool_size per callout in emqx/emqx.conf), {seconds:.0f} s per endpoint and server after a 1 s warm-up, "
             f"the two servers back to back case by case; authn rotates over {n_vehicles} registered vehicles, "
             "authz over their telemetry-publish and cmd-subscribe checks",
             f"{CURRENT}: as in production (python -m authsvc.server: one process per core, 8 threads each); "
             f"{PREVIOUS}: the configuration it replaced (bench/gunicorn_authsvc.py: one gthread worker per core, "
             "8 threads); wrk, both servers and PostgreSQL share the same cores",
             f"slowloris row: {HALF_SENT} extra connections each send the first lines of a request head and then "
             "nothing, held for the whole run; a gthread worker gives each one a thread",
             "µs CPU/req = the server's process tree CPU seconds during the run ÷ requests; "
             "the in-process rows are single-thread µs per check",
             f"× previous = requests/s ÷ the same case's requests/s on {PREVIOUS} in the same run"]
    report.write("authsvc", f"authsvc: MQTT authn/authz decisions through {CURRENT} (vs {PREVIOUS})",
                 ["case", "server", "per s", "× previous", "p50 ms", "p99 ms", "errors", "µs CPU/req", "target"],
                 rows, summary, notes, extra_versions={"wrk": "debian 4.1.0" if binary else "fallback"},
                 raw={"results": {f"{kind} {server}": r for (kind, server), r in results.items()}, "checks": checks,
                      "breakdown": breakdown, "quick": args.quick, "vehicles": n_vehicles})


if __name__ == "__main__":
    main()
