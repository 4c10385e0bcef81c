"""`make bench` / `python -m bench [--quick] [name ...]`: run the benchmarks one after another, each in its own
process (bounded to about two minutes, loopback only), then regenerate docs/BENCHMARKS.md. ``--quick`` runs small
sizes to check that everything works (its results are not for BENCHMARKS.md)."""
from __future__ import annotations

import subprocess
import sys
import time

from bench import report

BENCHMARKS = ("sql_ingest", "ingest_e2e", "authsvc", "reconnect_storm", "dispatch", "queries", "console",
              "login_flood", "vda5050_ingest")


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if a != "--quick"] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        report.say(f"== bench {name}")
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", f"bench.{name}", *(["--quick"] if quick else [])], timeout=900)
        report.say(f"== bench {name}: exit {done.returncode} after {time.monotonic() - started:.0f} s")
        if done.returncode != 0:
            failed.append(name)
    report.regenerate_doc()
    if failed:
        report.say("failed: " + ", ".join(failed))
        return 1
    report.say(f"results in bench/results/, table in {report.DOC.relative_to(report.PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
