"""HTTP load for the benchmarks: Debian's ``wrk`` (installed by the bench set-up when missing, as root with apt),
else a Python fallback (threads with keep-alive connections) whose reason is printed and recorded.

``run`` takes a list of request bodies (rotated round-robin, so authn sees many vehicles, not one cached row)
and returns requests/s, non-2xx count and latency p50/p99 in milliseconds. wrk reports its latency
percentiles from its own histogram (microsecond resolution) through a Lua ``done`` hook.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.loadgen import percentiles

_DONE_HOOK = """
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format('WRK_JSON {"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,'
    .. '"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d}\\n', summary.requests, summary.duration,
    summary.errors.status, errors, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max))
end
"""


def ensure_installed(log=print) -> tuple[str | None, str]:
    """Returns (binary, note): Debian's wrk, installing it with apt-get when root; else (None, why)."""
    binary = shutil.which("wrk")
    if binary:
        return binary, "wrk found"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "wrk is not installed and this user cannot apt-get install it: Python fallback load generator"
    log("installing Debian's wrk for the HTTP benchmarks (apt-get install -y wrk)")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "install", "-y", "-q", "wrk"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "wrk"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode == 0 and shutil.which("wrk"):
            break
    binary = shutil.which("wrk")
    return binary, ("wrk installed with apt-get" if binary
                    else "apt-get install wrk failed: Python fallback load generator")


def _lua_string(value: str) -> str:
    return "[==[" + value + "]==]"


def _script(method: str, headers: dict[str, str], bodies: list[str] | None) -> str:
    lines = [f'wrk.method = "{method}"']
    lines += [f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()]
    if bodies:
        lines.append("local bodies = {" + ",\n".join(_lua_string(b) for b in bodies) + "}")
        lines.append("local n = 0")
        lines.append("request = function()\n  n = n + 1\n"
                     "  return wrk.format(nil, nil, nil, bodies[(n % #bodies) + 1])\nend")
    return "\n".join(lines) + "\n" + _DONE_HOOK


def run(binary: str | None, url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
        bodies: list[str] | None = None, seconds: float = 10.0, connections: int = 16, threads: int = 2) -> dict:
    """Load ``url`` for ``seconds`` with ``connections`` keep-alive connections; requests/s and latency (ms)."""
    headers = dict(headers or {})
    if bodies:
        headers.setdefault("Content-Type", "application/json")
    if binary is None:
        return _python_load(url, method, headers, bodies, seconds, connections)
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "load.lua"
        script.write_text(_script(method, headers, bodies))
        done = subprocess.run([binary, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, int(seconds))}s",
                               "--timeout", "5s", "-s", str(script), url],
                              capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (exit {done.returncode}): {done.stderr[-500:]} {done.stdout[-500:]}")
    raw = json.loads(line.split(" ", 1)[1])
    secs = raw["duration_us"] / 1e6
    return {"tool": "wrk", "requests": raw["requests"], "seconds": round(secs, 2),
            "per_s": round(raw["requests"] / secs, 1), "non2xx": raw["non2xx"], "socket_errors": raw["socket_errors"],
            "p50_ms": round(raw["p50_us"] / 1000, 3), "p95_ms": round(raw["p95_us"] / 1000, 3),
            "p99_ms": round(raw["p99_us"] / 1000, 3),
            "max_ms": round(raw["max_us"] / 1000, 3), "connections": connections}


def _python_load(url: str, method: str, headers: dict[str, str], bodies: list[str] | None, seconds: float,
                 connections: int) -> dict:
    """Fallback: ``connections`` threads, each with one keep-alive HTTP/1.1 connection (GIL-bound: a floor)."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + seconds
    results: list[tuple[list[float], int, int]] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        latencies, non2xx, errors, n = [], 0, 0, offset
        while time.monotonic() < deadline:
            body = bodies[n % len(bodies)].encode() if bodies else None
            n += 1
            started = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                errors += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
                continue
            latencies.append((time.perf_counter() - started) * 1000.0)
            non2xx += not 200 <= response.status < 300
        conn.close()
        with lock:
            results.append((latencies, non2xx, errors))

    started = time.monotonic()
    workers = [threading.Thread(target=worker, args=(i * 7919,), daemon=True) for i in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 30)
    secs = time.monotonic() - started
    latencies = sorted(x for part in results for x in part[0])
    pct = percentiles(latencies)
    p95 = round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3) if latencies else None
    return {"tool": "python-fallback", "requests": len(latencies), "seconds": round(secs, 2),
            "per_s": round(len(latencies) / secs, 1), "non2xx": sum(p[1] for p in results),
            "socket_errors": sum(p[2] for p in results), "p50_ms": pct["p50"], "p95_ms": p95, "p99_ms": pct["p99"],
            "max_ms": pct["max"], "connections": connections}
