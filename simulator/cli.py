"""``fleet-sim`` / ``python -m simulator``: run 1..N simulated vehicles, or a scripted scenario.

    fleet-sim run --vehicles 10 --user admin --password …            # tokens from the api (after `make run`)
    fleet-sim run --enrollment-csv vehicles.csv                      # tokens from `fleetctl enroll-bulk`
    fleet-sim run --vehicles 10                                      # again later: device secrets from --state-dir
    fleet-sim scenario acceptance --user admin --password …          # the assignment's test procedure

Without ``--api``/``--broker`` it talks to the embedded stack of ``make run`` on whatever ports that runs
(simulator/arguments.py). Exit status: 0 clean, 1 some vehicle failed (or a scenario step failed), 2 bad arguments
or setup error.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from fleetcore import logs, topics
from fleetcore.logs import log_event
from simulator import display
from simulator.api_client import ApiError, OperatorApi
from simulator.arguments import UsageError, add_backend_args, operator_api, resolve_backend
from simulator.claims import RunClaims, VehiclesInUse
from simulator.credentials_store import CredentialsStore
from simulator.enrollment import ApiEnroller, load_csv_tokens, read_enrollment_csv
from simulator.faults import FaultConfig
from simulator.fleet import DEFAULT_HOME, Fleet, FleetOptions
from simulator.vehicle import BrokerAddress, State, Transport

log = logging.getLogger("simulator")


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _lat_lon(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("give LAT,LON, e.g. 48.137,11.575") from None
    return lat, lon


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-sim", description="Simulated vehicles for the fleet backend.")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: INFO with --plain, "
                                                          "WARNING with the live display)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run N vehicles until Ctrl-C or --duration")
    add_backend_args(run)
    run.add_argument("--vehicles", "-n", type=int, default=None,
                     help="how many vehicles (default 10; with --enrollment-csv: every row)")
    run.add_argument("--enrollment-csv", type=Path, help="tokens from `fleetctl enroll-bulk --out FILE`")
    run.add_argument("--prefix", help="vehicle id prefix (default '<fleet>-'); ids are <prefix>0001, …")
    run.add_argument("--duration", type=float, default=0.0, help="seconds to run (default: until Ctrl-C)")
    run.add_argument("--plain", action="store_true", help="log lines instead of the live display (CI, pipes)")
    run.add_argument("--mtls-broker", metavar="mqtts://HOST:PORT",
                     help="certificate identity: vehicles register with a CSR and connect here (the broker's mTLS "
                          "listener, 8884) with their certificate instead of a device secret; --ca verifies it")
    run.add_argument("--transport", choices=[t.value for t in Transport], default=Transport.AUTO.value,
                     help="auto (default): MQTT, and the api's HTTP fallback while the broker cannot be reached (3 "
                          "failed connects over at least a minute; MQTT is tried again every 5 min); mqtt: never "
                          "fall back; http: HTTP only, after registering over MQTT (a site that blocks MQTT)")
    run.add_argument("--takeover", action="store_true",
                     help="connect even if the vehicles are run by another fleet-sim or connected elsewhere (the "
                          "broker then disconnects the other client; if it reconnects, the two take turns)")
    sim = run.add_argument_group("simulation")
    sim.add_argument("--rate", type=_positive, default=1.0, help="telemetry messages per second per vehicle (1)")
    sim.add_argument("--time-scale", type=_positive, default=1.0,
                     help="simulated seconds per real second: 10 makes missions finish 10× faster (1)")
    sim.add_argument("--speed", type=_positive, default=5.0, help="cruise speed in m/s (5)")
    sim.add_argument("--home", type=_lat_lon, default=DEFAULT_HOME, help="LAT,LON the fleet is scattered around")
    sim.add_argument("--spread", type=_positive, default=2000.0, help="scatter radius in metres (2000)")
    sim.add_argument("--park", action="store_true", help="idle vehicles stand still instead of patrolling")
    sim.add_argument("--workers", type=int, default=4, help="I/O threads driving the MQTT clients (4)")
    sim.add_argument("--telemetry-qos", type=int, choices=(0, 1), default=1)
    sim.add_argument("--status-interval", type=_positive, default=30.0, help="periodic status every S seconds")
    sim.add_argument("--ramp", type=float, default=None, help="spread vehicle start-up over S seconds")
    sim.add_argument("--connect-concurrency", type=int, default=50,
                     help="at most this many vehicles connecting or registering at once (50)")
    sim.add_argument("--seed", type=int, help="random seed (repeatable routes and faults)")
    faults = run.add_argument_group("fault injection (all off by default)")
    faults.add_argument("--fault-drop-every", type=_positive, metavar="S",
                        help="drop the TCP connection about every S seconds (LWT, backoff, batch upload)")
    faults.add_argument("--fault-malformed", type=_probability, default=0.0, metavar="P",
                        help="share of telemetry sent malformed (bad JSON, missing/wrong fields, bad version)")
    faults.add_argument("--fault-clock-skew", type=float, default=0.0, metavar="S",
                        help="device clock off by S seconds (may be negative)")
    faults.add_argument("--fault-spoof", type=_probability, default=0.0, metavar="P",
                        help="share of ticks that also publish as another vehicle")
    faults.add_argument("--fault-duplicate", type=_probability, default=0.0, metavar="P",
                        help="share of telemetry sent twice with the same msg_id")
    faults.add_argument("--fault-out-of-order", type=_probability, default=0.0, metavar="P",
                        help="share of telemetry held back and sent after the next message")
    faults.add_argument("--fault-reject-missions", action="store_true", help="reject every mission")
    faults.add_argument("--fault-fail-missions", type=float, default=0.0, metavar="PERCENT",
                        help="fail every mission when it reaches PERCENT progress")

    scenario = sub.add_parser("scenario", help="scripted end-to-end scenarios against a running stack")
    scenario.add_argument("name", choices=("acceptance",), help="acceptance: the assignment's test procedure")
    add_backend_args(scenario, fleet_default=None)
    scenario.add_argument("--vehicles", "-n", type=int, default=3, help="vehicles to register (3)")
    scenario.add_argument("--time-scale", type=_positive, default=20.0,
                          help="mission speed-up so the scenario takes seconds (20)")
    scenario.add_argument("--timeout", type=_positive, default=60.0, help="seconds allowed per step (60)")
    return parser


def fault_config(args: argparse.Namespace) -> FaultConfig:
    return FaultConfig(drop_every_s=args.fault_drop_every or 0.0, malformed_rate=args.fault_malformed,
                       clock_skew_s=args.fault_clock_skew, spoof_rate=args.fault_spoof,
                       duplicate_rate=args.fault_duplicate, out_of_order_rate=args.fault_out_of_order,
                       reject_missions=args.fault_reject_missions, fail_missions_at=args.fault_fail_missions)


def vehicle_ids(args: argparse.Namespace, store: CredentialsStore) -> list[str]:
    """The vehicles of this run and, where needed, their enrollment tokens (from the CSV or the api)."""
    if args.enrollment_csv:
        try:
            rows = read_enrollment_csv(args.enrollment_csv)
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        rows = rows[:args.vehicles] if args.vehicles else rows
        load_csv_tokens(store, rows)
        return [row.vehicle_id for row in rows]
    count = args.vehicles if args.vehicles is not None else 10
    if count < 1:
        raise UsageError("--vehicles must be at least 1")
    prefix = args.prefix if args.prefix is not None else f"{args.fleet}-"
    width = max(4, len(str(count)))
    ids = [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]
    if not all(topics.is_vehicle_id(v) for v in ids):
        raise UsageError(f"--prefix {prefix!r} gives invalid vehicle ids (letters, digits, '-'; ≤ 64)")
    return ids


def run(args: argparse.Namespace) -> int:
    try:
        broker = BrokerAddress.parse(args.broker, args.ca)
        faults = fault_config(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if broker.tls and args.ca and not Path(args.ca).is_file():
        raise UsageError(f"--ca {args.ca}: no such file")
    if args.transport == Transport.HTTP.value and args.mtls_broker:
        raise UsageError("--transport http cannot be used with --mtls-broker: the api does not take client "
                         "certificates (docs/PROTOCOL.md → HTTP fallback)")
    store = CredentialsStore(args.state_dir)
    ids = vehicle_ids(args, store)
    claims = RunClaims(args.state_dir)
    try:
        claims.claim(ids, force=args.takeover)
    except VehiclesInUse as exc:
        raise UsageError(f"{exc}: choose other vehicles with --fleet or --prefix, stop that simulator, "
                         f"or pass --takeover") from None
    try:
        return _run_claimed(args, broker, faults, store, ids)
    finally:
        claims.release()


def _run_claimed(args: argparse.Namespace, broker: BrokerAddress, faults: FaultConfig, store: CredentialsStore,
                 ids: list[str]) -> int:
    api = None
    if not args.enrollment_csv and args.user:
        try:
            api = operator_api(args)
        except UsageError as exc:
            if any(not _has_credentials(store, v) for v in ids):
                raise
            # Every vehicle already has a device secret: the api is only needed to re-enroll, so go on without.
            log_event(log, "simulator.api_unavailable", logging.WARNING, error=str(exc))
    enroller = None
    if api is not None:
        if not args.takeover:
            _refuse_connected(api, args.fleet, ids)
        enroller = ApiEnroller(api, args.fleet)
        try:
            enroller.ensure_fleet()
            issued = enroller.prepare(store, ids)
        except (ApiError, OSError) as exc:
            raise UsageError(f"enrollment through the api failed: {exc}") from None
        log_event(log, "simulator.enrolled", fleet=args.fleet, new_tokens=issued)
    missing = [v for v in ids if not _has_credentials(store, v)]
    if missing:
        raise UsageError(f"{len(missing)} vehicle(s) have no device secret and no enrollment token "
                         f"(e.g. {missing[0]}); give --user/--password or --enrollment-csv")
    mtls_broker = None
    if getattr(args, "mtls_broker", None):
        try:
            mtls_broker = BrokerAddress.parse(args.mtls_broker, args.ca)
        except ValueError as exc:
            raise UsageError(f"--mtls-broker: {exc}") from None
        if not mtls_broker.tls:
            raise UsageError("--mtls-broker must be an mqtts:// address (the mTLS listener)")
    options = FleetOptions(
        vehicle_ids=ids, broker=broker, state_dir=args.state_dir, workers=args.workers, time_scale=args.time_scale,
        rate_hz=args.rate, cruise_mps=args.speed, home=args.home, spread_m=args.spread, patrol=not args.park,
        faults=faults, seed=args.seed, telemetry_qos=args.telemetry_qos, status_every_s=args.status_interval,
        ramp_s=args.ramp, connect_concurrency=args.connect_concurrency, mtls_broker=mtls_broker,
        transport=Transport(args.transport), api_url=args.api)
    fleet = Fleet(options, renew_token=enroller.new_token if enroller else None)
    log_event(log, "simulator.starting", vehicles=len(ids), broker=str(broker), workers=args.workers,
              faults=faults.active)
    stop = threading.Event()
    _install_signal_handlers(stop)
    fleet.start()
    deadline = time.monotonic() + args.duration if args.duration else None
    title = f"fleet-sim: {len(ids)} vehicles → {broker}"
    try:
        if args.plain or not sys.stdout.isatty():
            _plain_loop(fleet, stop, deadline)
        else:
            _live_loop(fleet, stop, deadline, title)
    finally:
        clean = fleet.stop()
    final = fleet.snapshot()
    display.log_snapshot(final, None)
    failed = final.states.get(State.FAILED.value, 0)
    print(f"stopped {'cleanly' if clean else 'with vehicles still connected'}: {final.vehicles} vehicles, "
          f"{final.messages_out} messages sent, missions {final.missions}, {failed} failed", file=sys.stderr)
    for reason, count in final.failures.items():
        print(f"  {count} vehicle(s) failed: {reason}", file=sys.stderr)
    return 1 if failed else 0


def _refuse_connected(api: OperatorApi, fleet_id: str, ids: list[str]) -> None:
    """UsageError when one of ``ids`` is connected already (another simulator, another machine, a real vehicle):
    two clients with one id would take the session from each other in turn (simulator/claims.py)."""
    wanted, online, page = set(ids), [], 1
    try:
        while True:
            answer = api.get("/api/v1/vehicles", params={"fleet_id": fleet_id, "online": "true", "per_page": 500,
                                                         "page": page})
            online += [v["id"] for v in answer["items"] if v["id"] in wanted]
            if page >= answer["page"]["pages"]:
                break
            page += 1
    except ApiError as exc:
        if exc.status == 404:
            return                      # the fleet does not exist yet: nothing of it is connected
        raise UsageError(f"could not check which vehicles are connected: {exc}") from None
    if online:
        online.sort()
        shown = ", ".join(online[:3]) + (f" and {len(online) - 3} more" if len(online) > 3 else "")
        raise UsageError(f"{shown} {'is' if len(online) == 1 else 'are'} already connected (another simulator or "
                         f"a vehicle uses {'this id' if len(online) == 1 else 'these ids'}): choose other vehicles "
                         f"with --fleet or --prefix, stop the other client, or pass --takeover")


def _has_credentials(store: CredentialsStore, vehicle_id: str) -> bool:
    credentials = store.load(vehicle_id)
    return credentials is not None and (credentials.registered or bool(credentials.enrollment_token))


def _install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum, frame):
        stop.set()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _finished(stop: threading.Event, deadline: float | None) -> bool:
    return stop.is_set() or (deadline is not None and time.monotonic() >= deadline)


def _plain_loop(fleet: Fleet, stop: threading.Event, deadline: float | None, every_s: float = 5.0) -> None:
    before = fleet.snapshot()
    while not _finished(stop, deadline):
        stop.wait(min(every_s, max(0.05, (deadline - time.monotonic()) if deadline else every_s)))
        now = fleet.snapshot()
        display.log_snapshot(now, before)
        before = now


def _live_loop(fleet: Fleet, stop: threading.Event, deadline: float | None, title: str) -> None:
    from rich.live import Live
    before = fleet.snapshot()
    with Live(display.render(before, None, title), refresh_per_second=4, transient=False) as live, \
            display.logs_above(live):
        while not _finished(stop, deadline):
            stop.wait(1.0)
            now = fleet.snapshot()
            live.update(display.render(now, before, title))
            before = now


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    plain = args.command == "run" and (args.plain or not sys.stdout.isatty())
    logs.configure("simulator", level=args.log_level or ("INFO" if plain else "WARNING"))
    try:
        resolve_backend(args)
        if args.command == "run":
            return run(args)
        from simulator.scenarios import acceptance
        return acceptance.main(args)
    except UsageError as exc:
        print(f"fleet-sim: {exc}", file=sys.stderr)
        return 2
