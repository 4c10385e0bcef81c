"""Where the stand-in broker's time goes under the end-to-end ingest load: py-spy samples the broker process while
100 vehicles publish QoS 1 telemetry, and the samples are summed by function (self time) and by area.

    .venv/bin/pip install py-spy && .venv/bin/python -m bench.profile_ingest     # → bench/results/profile_ingest.txt

py-spy is a profiling tool, not a dependency of the project; without it this prints how to install it.
"""
from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench import loadgen
from bench.fleet import provision_vehicles
from bench.report import RESULTS_DIR, say
from bench.stackutil import start_stack

AREAS = (("emqx/standin/mqtt/", "MQTT codec"), ("emqx/standin/broker.py", "MQTT sessions/routing"),
         ("emqx/standin/connection.py", "MQTT sessions/routing"), ("emqx/standin/listeners.py", "sockets"),
         ("emqx/standin/authz.py", "authorization"), ("emqx/standin/rules/actions/pgsql.py", "pgsql action"),
         ("emqx/standin/rules/actions/base.py", "buffer workers"), ("emqx/standin/rules/", "rule engine"),
         ("asyncpg/", "asyncpg driver"), ("asyncio/", "asyncio loop"), ("selectors.py", "asyncio loop"),
         ("aiohttp/", "aiohttp"))


def area_of(frame: str) -> str:
    for needle, name in AREAS:
        if needle in frame:
            return name
    return "other"


def main() -> int:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        stack = start_stack(Path(tmp), ("authsvc", "broker"))
        try:
            credentials = provision_vehicles(stack.database_url, stack.secrets["FLEET_DEVICE_SECRET_KEY"], "prof-", 100)
            broker_pid = stack.component("broker").process.pid
            raw = Path(tmp) / "broker.txt"
            spec = loadgen.LoadSpec("127.0.0.1", stack.config.ports.mqtt, credentials, 300, window=10)
            result: dict = {}
            load = threading.Thread(target=lambda: result.update(loadgen.run(spec)))
            load.start()
            subprocess.run([py_spy, "record", "--pid", str(broker_pid), "--duration", "8", "--rate", "200",
                            "--format", "raw", "--output", str(raw), "--nonblocking"], check=True,
                           capture_output=True)
            load.join()
            stacks = raw.read_text().splitlines()
        finally:
            stack.stop("profile finished")
    self_time: collections.Counter[str] = collections.Counter()
    by_area: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks:
        frames, _, count = line.rpartition(" ")
        n = int(count)
        leaf = frames.split(";")[-1]
        total += n
        self_time[leaf] += n
        project_frames = [f for f in reversed(frames.split(";")) if "emqx/standin" in f]
        by_area[area_of(project_frames[0]) if project_frames else area_of(leaf)] += n
    lines = [f"stand-in broker profile: 100 vehicles, QoS 1, {result.get('acked_per_s')} msgs/s acked "
             f"(publish→PUBACK p50 {result.get('latency_ms', {}).get('p50')} ms), {total} samples at 200 Hz", "",
             "by area (innermost stand-in frame):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in by_area.most_common()]
    lines += ["", "top functions by self time:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in self_time.most_common(20)]
    out = RESULTS_DIR / "profile_ingest.txt"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    say("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
