"""A fleet of simulated vehicles in one process: builds the vehicles, spreads them over a few I/O workers,
starts them (staggered, so 1,000 vehicles do not all CONNECT in the same millisecond), sums their counters
for the display, and stops them cleanly."""
from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleetcore.logs import log_event
from simulator.controller import Controller
from simulator.credentials_store import CredentialsStore
from simulator.faults import FaultConfig
from simulator.motion import Motion, Profile, scatter
from simulator.netloop import Gate, IoWorker, start_workers
from simulator.vehicle import BrokerAddress, Counters, SimVehicle, State, Transport, VehicleOptions

DEFAULT_HOME = (48.1372, 11.5755)  # Munich, Marienplatz
JOIN_S = 3.0                       # stopping: how long all of the fleet's threads together may take to end

log = logging.getLogger("simulator.fleet")


@dataclass
class FleetOptions:
    vehicle_ids: list[str]
    broker: BrokerAddress
    state_dir: Path
    workers: int = 4
    time_scale: float = 1.0
    rate_hz: float = 1.0
    cruise_mps: float = 5.0
    home: tuple[float, float] = DEFAULT_HOME
    spread_m: float = 2000.0
    patrol: bool = True
    faults: FaultConfig = field(default_factory=FaultConfig)
    seed: int | None = None
    telemetry_qos: int = 1
    status_every_s: float = 30.0
    progress_every_s: float = 2.0
    ramp_s: float | None = None      # spread of start times; default: 10 ms per vehicle, at most 10 s
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    buffer_capacity: int = 3600
    connect_concurrency: int = 50    # vehicles between CONNECT and CONNACK (or registering) at the same time
    mtls_broker: BrokerAddress | None = None   # certificate identity: CSR at registration, then mTLS here
    transport: Transport = Transport.AUTO     # HTTP fallback (docs/PROTOCOL.md); needs api_url
    api_url: str | None = None
    fallback_after: int = 3
    fallback_min_span_s: float = 60.0
    probe_every_s: float = 300.0
    connack_timeout_s: float = 10.0


@dataclass
class Snapshot:
    at: float
    vehicles: int
    states: dict[str, int]
    sent: dict[str, int]
    missions: dict[str, int]
    active_missions: int
    commands: int
    duplicate_commands: int
    bad_commands: int
    registered: int
    register_rejected: int
    connects: int
    disconnects: int
    refused: int
    publish_errors: int
    subscribe_denied: int
    buffered: int
    buffer_dropped: int
    faults: dict[str, int]
    loop_errors: int
    failures: dict[str, int]
    fallbacks: int = 0           # switches to the HTTP fallback

    @property
    def messages_out(self) -> int:
        return sum(v for k, v in self.sent.items() if k != "register/request")


class Fleet:
    def __init__(self, options: FleetOptions, renew_token: Callable[[str], str | None] | None = None) -> None:
        if not options.vehicle_ids:
            raise ValueError("no vehicles to simulate")
        self.options = options
        self.store = CredentialsStore(options.state_dir)
        self.rng = random.Random(options.seed)
        self.workers: list[IoWorker] = []
        self.counters: list[Counters] = []
        self.vehicles: dict[str, SimVehicle] = {}
        self.renew_token = renew_token
        self.gate = Gate(max(1, options.connect_concurrency))

    def _build(self) -> None:
        opts = self.options
        self.workers = start_workers(max(1, min(opts.workers, len(opts.vehicle_ids))))
        self.counters = [Counters() for _ in self.workers]
        vehicle_options = VehicleOptions(broker=opts.broker, telemetry_qos=opts.telemetry_qos,
                                         backoff_base_s=opts.backoff_base_s, backoff_cap_s=opts.backoff_cap_s,
                                         buffer_capacity=opts.buffer_capacity, mtls_broker=opts.mtls_broker,
                                         transport=opts.transport, api_url=opts.api_url,
                                         fallback_after=opts.fallback_after,
                                         fallback_min_span_s=opts.fallback_min_span_s,
                                         probe_every_s=opts.probe_every_s,
                                         connack_timeout_s=opts.connack_timeout_s)
        for index, vehicle_id in enumerate(opts.vehicle_ids):
            rng = random.Random(self.rng.random())
            lat, lon = scatter(rng, *opts.home, opts.spread_m)
            motion = Motion(lat, lon, heading_deg=rng.uniform(0, 360), battery_pct=rng.uniform(60, 100),
                            odometer_m=rng.uniform(0, 50_000), profile=Profile(cruise_mps=opts.cruise_mps))
            controller = Controller(vehicle_id, motion, rng=rng, faults=opts.faults, time_scale=opts.time_scale,
                                    patrol=opts.patrol, progress_every_s=opts.progress_every_s,
                                    status_every_s=opts.status_every_s)
            controller.telemetry_interval_s = 1.0 / opts.rate_hz
            slot = index % len(self.workers)
            self.vehicles[vehicle_id] = SimVehicle(
                vehicle_id, worker=self.workers[slot], store=self.store, controller=controller,
                options=vehicle_options, counters=self.counters[slot], rng=rng, faults=opts.faults,
                neighbours=opts.vehicle_ids[max(0, index - 3):index + 4], renew_token=self.renew_token,
                gate=self.gate)

    def start(self) -> None:
        self._build()
        count = len(self.vehicles)
        ramp = self.options.ramp_s if self.options.ramp_s is not None else min(10.0, 0.01 * count)
        for index, vehicle in enumerate(self.vehicles.values()):
            vehicle.start(delay=ramp * index / count)

    def vehicle(self, vehicle_id: str) -> SimVehicle:
        return self.vehicles[vehicle_id]

    def stop(self, timeout: float = 10.0) -> bool:
        """Clean shutdown: every vehicle publishes OFFLINE (or, on HTTP, reports its mission failed) and disconnects;
        then every thread the fleet started has ended. True if all vehicles did within ``timeout`` and every thread
        ended within ``JOIN_S`` more.

        No thread of the fleet may go on after this returns (a long-poll could block one for 25 s, and a thread that
        logs after its owner is gone writes into closed streams): every HTTP link is aborted first — all of them,
        so the wait is one ``JOIN_S`` for the whole fleet, not one per vehicle — then all threads are joined."""
        for vehicle in self.vehicles.values():
            vehicle.stop()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(v.done for v in self.vehicles.values()):
            time.sleep(0.05)
        clean = all(v.done for v in self.vehicles.values())
        links = [link for vehicle in self.vehicles.values() for link in vehicle.http_links]
        for link in links:
            link.abort()
        for worker in self.workers:
            worker.stop()
        join_deadline = time.monotonic() + JOIN_S
        for link in links:
            link.join(max(0.0, join_deadline - time.monotonic()))
        for worker in self.workers:
            worker.join(max(0.0, join_deadline - time.monotonic()))
        left = [t.name for t in self.workers if t.is_alive()] + [link.vehicle_id for link in links if link.alive]
        if left:
            log_event(log, "fleet.threads_left", logging.WARNING, threads=left[:10], count=len(left))
        return clean and not left

    def snapshot(self) -> Snapshot:
        vehicles = list(self.vehicles.values())
        states = Counter(v.state.value for v in vehicles)
        sent: Counter[str] = Counter()
        faults: Counter[str] = Counter()
        totals: Counter[str] = Counter()
        for counters in self.counters:
            sent.update(counters.sent)
            faults.update(counters.faults)
            for name in ("registered", "register_rejected", "connects", "disconnects", "refused", "publish_errors",
                         "subscribe_denied", "fallbacks"):
                totals[name] += getattr(counters, name)
        missions: Counter[str] = Counter()
        commands = duplicates = bad = active = 0
        for vehicle in vehicles:
            stats = vehicle.controller.stats
            missions.update(stats.missions)
            commands += stats.commands
            duplicates += stats.duplicate_commands
            bad += stats.bad_commands
            active += vehicle.controller.mission is not None
        failures = Counter(v.last_error or "unknown" for v in vehicles if v.state == State.FAILED)
        return Snapshot(
            at=time.monotonic(), vehicles=len(vehicles), states=dict(states), sent=dict(sent),
            missions=dict(missions), active_missions=active, commands=commands, duplicate_commands=duplicates,
            bad_commands=bad, buffered=sum(len(v.buffer) for v in vehicles),
            buffer_dropped=sum(v.buffer.dropped for v in vehicles), faults=dict(faults),
            loop_errors=sum(w.errors for w in self.workers), failures=dict(failures), **totals)
