"""authsvc: MQTT authn and authz decisions per second and p50/p99 through the production WSGI server (gunicorn,
``authsvc/gunicorn_conf.py``), driven by wrk over keep-alive connections as the broker does.

Baselines measured in the same run:
* the same gunicorn serving ``GET /healthz`` (Flask routing + one database ping: the server's floor);
* in-process, the device-secret check (HMAC-SHA-256 + constant-time compare, what authn does per CONNECT)
  beside one bcrypt operator-password check (``api.auth.check_password``, what a login costs).

Targets: authn ≥ 2,000/s, authz ≥ 5,000/s, p99 < 10 ms.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench import report, wrk
from bench.fleet import provision_vehicles
from bench.report import say
from bench.stackutil import cpu_seconds, start_stack
from fleetcore import credentials, topics

TARGETS = {"authn": (2000, 10.0), "authz": (5000, 10.0)}


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
    stored = credentials.keyed_hash(key, secret)
    hmac_check = time_per_call(lambda: credentials.matches(key, secret, stored), seconds)
    password_hash = hash_password("correct horse battery staple")
    bcrypt_check = time_per_call(lambda: check_password("correct horse battery staple", password_hash), seconds)
    return {"hmac": hmac_check, "bcrypt": bcrypt_check, "bcrypt_cost": int(password_hash.split("$")[2])}


def in_process_breakdown(env: dict[str, str], authz_body: str, seconds: float) -> dict:
    """Where an authz request's time goes: the decision alone (``acl.decide``) vs the whole Flask app called as
    WSGI in this process (no HTTP server, no socket); the rest of the server's CPU per request is gunicorn + HTTP."""
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, to prove the benchmark works")
    parser.add_argument("--seconds", type=float, default=None, help="wrk duration per endpoint")
    parser.add_argument("--vehicles", type=int, default=None)
    parser.add_argument("--connections", type=int, default=8,
                        help="keep-alive connections; 8 = the broker's pool_size for authn and for authz (emqx.conf)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 15.0)
    n_vehicles = args.vehicles or (50 if args.quick else 1000)
    binary, tool_note = wrk.ensure_installed(say)
    say(f"authsvc: {tool_note}")
    with tempfile.TemporaryDirectory(prefix="bench-authsvc-") as tmp:
        stack = start_stack(Path(tmp), ("authsvc",))
        try:
            key = stack.secrets["FLEET_DEVICE_SECRET_KEY"]
            creds = provision_vehicles(stack.database_url, key, "authb-", n_vehicles)
            base = stack.url("authsvc")
            broker_headers = {"x-fleet-broker-token": stack.secrets["FLEET_BROKER_TOKEN"]}
            authsvc_pid = stack.component("authsvc").process.pid
            cases = [("healthz (baseline: same gunicorn, Flask + one DB ping)", "GET", "/healthz", None),
                     ("authn: device secret (1 DB round trip + HMAC)", "POST", "/mqtt/authn", authn_bodies(creds)),
                     ("authz: own topics (pure CPU)", "POST", "/mqtt/authz", authz_bodies(creds))]
            # Warm-up: every worker's database pool and code paths.
            for _, method, path, bodies in cases:
                wrk.run(binary, base + path, method=method, headers=broker_headers, bodies=bodies, seconds=1,
                        connections=args.connections)
            results = []
            for label, method, path, bodies in cases:
                say(f"authsvc: {label} for {seconds:.0f} s")
                cpu_before = cpu_seconds(authsvc_pid)
                result = wrk.run(binary, base + path, method=method, headers=broker_headers, bodies=bodies,
                                 seconds=seconds, connections=args.connections)
                result["authsvc_cpu_s"] = round(cpu_seconds(authsvc_pid) - cpu_before, 2)
                results.append((label, path, result))
            breakdown = in_process_breakdown(stack.service_env() | {"FLEET_LOG_LEVEL": "WARNING"},
                                             authz_bodies(creds)[0], 1.0 if args.quick else 3.0)
        finally:
            stack.stop("benchmark finished")
    checks = credential_checks(key, creds[0][1], 1.0 if args.quick else 3.0)

    base_rate = results[0][2]["per_s"]
    rows, summary = [], []
    for label, path, r in results:
        kind = path.rsplit("/", 1)[-1]
        target = TARGETS.get(kind)
        verdict = None
        if target:
            verdict = "met" if r["per_s"] >= target[0] and r["p99_ms"] < target[1] else "missed"
        rows.append([label, r["per_s"], round(r["per_s"] / base_rate, 2) if base_rate else None, r["p50_ms"],
                     r["p99_ms"], r["non2xx"] + r["socket_errors"],
                     round(r["authsvc_cpu_s"] * 1e6 / max(r["requests"], 1), 0),
                     f"≥ {target[0]:,}/s, p99 < {target[1]:.0f} ms: {verdict}" if target else "—"])
        if target:
            summary.append(f"{kind}: {r['per_s']:,.0f}/s = {r['per_s'] / base_rate:.2f}× /healthz on the same "
                           f"server, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms — target {verdict}")
    hmac_us = checks["hmac"]["seconds_per_call"] * 1e6
    bcrypt_ms = checks["bcrypt"]["seconds_per_call"] * 1e3
    rows.append(["device-secret check in process: HMAC-SHA-256 + compare_digest", round(1e6 / hmac_us, 0), None,
                 round(hmac_us / 1000, 4), None, 0, round(hmac_us, 1), "—"])
    rows.append([f"operator password check in process: bcrypt cost {checks['bcrypt_cost']} (contrast)",
                 round(1000 / bcrypt_ms, 1), None, round(bcrypt_ms, 2), None, 0, round(bcrypt_ms * 1000, 0), "—"])
    decide_us = breakdown["acl_decide"]["seconds_per_call"] * 1e6
    flask_us = breakdown["flask_app"]["seconds_per_call"] * 1e6
    authz_cpu_us = next(r["authsvc_cpu_s"] * 1e6 / max(r["requests"], 1) for _, path, r in results
                        if path == "/mqtt/authz")
    rows.append(["authz decision alone in process (acl.decide)", round(1e6 / decide_us, 0), None,
                 round(decide_us / 1000, 4), None, 0, round(decide_us, 1), "—"])
    rows.append(["authz through the Flask app in process (WSGI call, no server)", round(1e6 / flask_us, 0), None,
                 round(flask_us / 1000, 4), None, 0, round(flask_us, 1), "—"])
    summary.append(f"where an authz request's CPU goes: decision {decide_us:.1f} µs, Flask request handling "
                   f"{flask_us - decide_us:.0f} µs, gunicorn + HTTP {max(authz_cpu_us - flask_us, 0):.0f} µs "
                   f"(of {authz_cpu_us:.0f} µs per request in the server): the decision is "
                   f"{100 * decide_us / authz_cpu_us:.1f} % of the cost")
    summary.append(f"one bcrypt operator-password check costs {bcrypt_ms:,.0f} ms = "
                   f"{bcrypt_ms * 1000 / hmac_us:,.0f}× "
                   f"the device-secret HMAC check ({hmac_us:.1f} µs); with bcrypt device secrets a 1,000-vehicle "
                   f"reconnect storm would cost ≈ {bcrypt_ms:,.0f} CPU seconds in authsvc alone")
    notes = [f"load tool: {results[0][2]['tool']} ({tool_note}), {args.connections} keep-alive connections (the "
             "broker's pool_size per callout in emqx/emqx.conf), "
             f"{seconds:.0f} s per endpoint after a 1 s warm-up; authn rotates over {n_vehicles} registered vehicles, "
             "authz over their telemetry-publish and cmd-subscribe checks",
             "gunicorn as configured for production (authsvc/gunicorn_conf.py: one gthread worker per core, "
             "8 threads); wrk, gunicorn and PostgreSQL share the same cores",
             "µs CPU/req = authsvc process tree (master + workers) CPU seconds during the run ÷ requests; "
             "the in-process rows are single-thread µs per check",
             "ratio column = decisions/s ÷ /healthz requests/s on the same server in the same run"]
    report.write("authsvc", "authsvc: MQTT authn/authz decisions through gunicorn",
                 ["case", "per s", "× /healthz", "p50 ms", "p99 ms", "errors", "µs CPU/req", "target"],
                 rows, summary, notes, extra_versions={"wrk": "debian 4.1.0" if binary else "fallback"},
                 raw={"results": {path: r for _, path, r in results}, "checks": checks, "breakdown": breakdown,
                      "quick": args.quick, "vehicles": n_vehicles})


if __name__ == "__main__":
    main()
