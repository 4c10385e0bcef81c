"""What every ``fleet-sim`` command shares: the backend options, the operator login they give, ``UsageError``.

Used by ``cli`` (which builds the parser) and by the scenarios (which receive the parsed arguments). Without
``--api``/``--broker`` the simulator talks to the embedded stack running from ``var/`` on whatever ports it was
started, else to the ports of the ``FLEET_PORT_*`` variables ``make run`` reads, else to the defaults
(fleetcore/embedded.py).
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from fleetcore import embedded, paths
from simulator.api_client import ApiError, OperatorApi

DEFAULT_STATE_DIR = paths.state_dir() / "simulator"
PASSWORD_ENV = "FLEET_SIM_PASSWORD"  # noqa: S105 - the variable's name, not a password
_WHERE = "the stack running from var/, else FLEET_PORT_{}, else port {}"


class UsageError(Exception):
    """Bad arguments or an impossible setup; the message is shown to the user."""


def add_backend_args(parser: argparse.ArgumentParser, fleet_default: str | None = "sim") -> None:
    group = parser.add_argument_group("backend")
    defaults = embedded.Ports()
    group.add_argument("--api", help="operator api base URL (default: "
                       + _WHERE.format("API", defaults.api) + ")")
    group.add_argument("--user", help="operator/admin user for the api (creates vehicles, gets tokens)")
    group.add_argument("--password", help=f"password of --user (or set {PASSWORD_ENV}; prompted on a terminal)")
    group.add_argument("--broker", help="mqtt://host:port or mqtts://host:port for TLS (default: "
                       + _WHERE.format("MQTT", defaults.mqtt) + ")")
    group.add_argument("--ca", help="CA certificate (PEM) to verify the broker with mqtts://")
    group.add_argument("--fleet", default=fleet_default,
                       help="fleet id the vehicles belong to; created if missing (default: "
                            + (fleet_default or "a new acceptance-<random> fleet") + ")")
    group.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                       help=f"where each vehicle keeps its device secret (default {DEFAULT_STATE_DIR})")


def resolve_backend(args: argparse.Namespace) -> None:
    """Fill in ``--api`` and ``--broker`` where they were not given: from the running stack, else FLEET_PORT_*."""
    if args.api and args.broker:
        return
    try:
        where = embedded.addresses()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    args.api = args.api or where.api_url
    args.broker = args.broker or where.mqtt_url


def password_from(args: argparse.Namespace) -> str | None:
    if args.password:
        return args.password
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if args.user and sys.stdin.isatty():
        return getpass.getpass(f"password for {args.user}: ")
    return None


def operator_api(args: argparse.Namespace) -> OperatorApi | None:
    """The api logged in as ``--user``, or None without one; UsageError when that cannot work."""
    if not args.user:
        return None
    password = password_from(args)
    if not password:
        raise UsageError(f"--user {args.user} needs a password (--password or {PASSWORD_ENV})")
    try:
        return OperatorApi(args.api, args.user, password).login()
    except ApiError as exc:
        raise UsageError(f"cannot log in to the api at {args.api} as {args.user}: {exc}") from None
    except OSError as exc:
        hint = "" if embedded.running() else " (no embedded stack is running from var/: start it with `make run`)"
        raise UsageError(f"cannot reach the api at {args.api}{hint}: {exc}") from None
