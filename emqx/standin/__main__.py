"""``python -m emqx.standin --config emqx/emqx.conf`` — run the EMQX-compatible stand-in broker.

Reads the HOCON file plus ``EMQX_*`` overrides (as EMQX does), starts the listeners and the REST API, and runs
until SIGTERM/SIGINT, then shuts down gracefully and exits 0. A configuration the stand-in cannot honour exits 2
with a message naming the key.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from fleetcore import logs
from fleetcore.logs import log_event

from . import memory
from .app import StandinApp
from .config import ConfigError, load_config
from .listeners import ListenerError
from .rest_api import ApiKeyError

log = logging.getLogger("emqx.standin")


async def _run(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        log_event(log, "standin.config_error", logging.ERROR, error=str(exc))
        print(f"emqx.standin: configuration error: {exc}", file=sys.stderr)
        return 2
    app = StandinApp(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
    except (ConfigError, ListenerError, ApiKeyError, ImportError) as exc:
        log_event(log, "standin.start_failed", logging.ERROR, error=str(exc))
        print(f"emqx.standin: cannot start: {exc}", file=sys.stderr)
        await app.stop(timeout=2)
        return 2
    except OSError as exc:
        log_event(log, "standin.start_failed", logging.ERROR, error=str(exc))
        print(f"emqx.standin: cannot start: {exc}", file=sys.stderr)
        await app.stop(timeout=2)
        return 1
    await stop.wait()
    log_event(log, "standin.stopping", reason="signal")
    await app.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emqx.standin", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="path to emqx.conf (HOCON)")
    args = parser.parse_args(argv)
    logs.configure("broker")
    memory.keep_large_buffers_on_mmap()
    return asyncio.run(_run(args.config))


if __name__ == "__main__":
    sys.exit(main())
