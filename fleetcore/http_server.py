"""How the api and authsvc are served: granian, an HTTP/1.1 server whose connections are handled in Rust (hyper on
tokio), in front of the Python application. The same in Docker and in the embedded stack.

A thread-per-connection WSGI server gives a thread to every unfinished request, so a few dozen half-sent
requests (slowloris) stop every other call, emergency stop included. granian reads requests on its own I/O
runtime and hands Python only complete ones:

* a connection that has not sent a whole request head within ``header_timeout_s`` is closed — an idle
  keep-alive connection too, so the same setting is the keep-alive timeout;
* WSGI (authsvc): granian reads the body before it takes one of the ``threads`` blocking threads, and writes
  the answer after the thread has returned it;
* ASGI (the api, api/asgi.py): the same, done by the api's bridge, which also bounds the time a body may take
  and lets a response be a long-lived stream that costs a coroutine instead of a thread.

What each limit protects and the measurements behind the choice: docs/OPERATIONS.md (HTTP servers).
No server of ours keeps state outside its own processes — no control socket, no pid file, nothing in the home
directory — so two stacks on one machine never touch each other's servers (tests/test_embedded_stack.py).
"""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetcore.config import ConfigError, Settings

MAX_HEADER_TIMEOUT_S = 60.0    # granian's upper bound for http1 header_read_timeout
GRACEFUL_STOP_S = 10           # on SIGTERM: in-flight requests get this long, then the workers are killed


@dataclass(frozen=True)
class ServerSettings(Settings):
    """Each service subclasses this, naming the variables (api/config.py, authsvc/config.py)."""
    bind: str                  # host:port
    workers: int               # processes; 0 = one per core
    threads: int               # threads per process that run the (synchronous) application
    header_timeout_s: float    # a request head must arrive within this; also the idle keep-alive timeout

    def address(self) -> tuple[str, int]:
        host, sep, port = self.bind.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"bind address must be host:port, got {self.bind!r}")
        return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an empty host means all, as in a container

    def process_count(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)

    def header_timeout_ms(self) -> int:
        if not 0 < self.header_timeout_s <= MAX_HEADER_TIMEOUT_S:
            raise ConfigError(f"the header timeout must be more than 0 and at most {MAX_HEADER_TIMEOUT_S:.0f} s, "
                              f"got {self.header_timeout_s}")
        return max(1, round(self.header_timeout_s * 1000))


def log_config(component: str) -> dict:
    """granian's own messages in our structured format (fleetcore/logs.py); no access log — requests are counted
    in /metrics and errors are logged by the applications."""
    as_json = (os.environ.get("FLEET_LOG_FORMAT") or "logfmt").lower() == "json"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structured": {"()": "fleetcore.logs.StructuredFormatter", "component": component,
                                      "as_json": as_json}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured",
                                 "stream": "ext://sys.stderr"}},
        "loggers": {"_granian": {"handlers": ["console"], "propagate": False},
                    "granian.access": {"handlers": ["console"], "level": "WARNING", "propagate": False}},
    }


def traced_threads(app: Callable[..., Any]) -> Callable[..., Any]:
    """``app`` (WSGI) as it is, unless a tracer for new threads is set (``threading.settrace``): coverage.py's, when
    ``make test`` measures the services. granian runs a WSGI application in threads it starts itself, outside the
    ``threading`` module, which such a tracer never reaches; each of them is then handed the tracer before its
    first request, so their code is measured too. Production sets no tracer and gets ``app`` unchanged."""
    tracer = threading.gettrace()
    if tracer is None:
        return app

    def traced(environ: dict, start_response: Callable[..., Any]) -> Any:
        if sys.gettrace() is None:
            sys.settrace(tracer)
        return app(environ, start_response)
    return traced


def serve(component: str, factory: str, interface: str, settings: ServerSettings) -> None:
    """Serve ``factory`` ("module:function" returning the WSGI or ASGI application, called once per worker
    process) until SIGTERM or SIGINT."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    host, port = settings.address()
    level = (os.environ.get("FLEET_LOG_LEVEL") or "info").lower()
    wsgi = interface == "wsgi"
    Granian(
        factory, address=host, port=port, factory=True,
        interface=Interfaces.WSGI if wsgi else Interfaces.ASGI,
        workers=settings.process_count(),
        blocking_threads=settings.threads if wsgi else 1,   # ASGI: the application keeps its own thread pool
        http=HTTPModes.http1, websockets=False,
        http1_settings=HTTP1Settings(header_read_timeout=settings.header_timeout_ms()),
        log_level=LogLevels(level) if level in LogLevels.__members__ else LogLevels.info,
        log_dictconfig=log_config(component),
        respawn_failed_workers=True,
        workers_kill_timeout=GRACEFUL_STOP_S,
    ).serve()
