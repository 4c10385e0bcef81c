"""QoS 1 telemetry load from N vehicles, spread over worker processes, each keeping a window of messages in flight.

Every vehicle publishes ``messages`` telemetry envelopes to its own topic as fast as PUBACKs return, with at most
``window`` unacknowledged. Per message it records publish → PUBACK latency. A PUBACK only means the broker has the
message — against the stand-in as against EMQX, which write the row later from their rule actions, and against
mosquitto; whoever counts stored rows waits for the writes (bench/stackutil.py ``wait_actions_processed``).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import time
import uuid
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from bench.paho_pool import ClientPool
from fleetcore import topics


@dataclass
class LoadSpec:
    host: str
    port: int
    credentials: list[tuple[str, str | None]]      # (vehicle id, password or None for an open broker)
    messages: int                                  # per vehicle
    window: int = 10
    qos: int = 1
    processes: int = 2
    timeout_s: float = 120.0


@dataclass
class LoadResult:
    sent: int = 0
    acked: int = 0
    started: float = 0.0
    finished: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    connect_failures: int = 0
    timed_out: bool = False

    @property
    def seconds(self) -> float:
        return max(self.finished - self.started, 1e-9)


def telemetry_payload(seq: int, lat: float = 48.137, lon: float = 11.575) -> bytes:
    return json.dumps({"v": 1, "msg_id": uuid.uuid4().hex, "seq": seq, "ts": int(time.time() * 1000),
                       "data": {"lat": lat + seq * 1e-6, "lon": lon, "heading_deg": 90.0, "speed_mps": 3.2,
                                "battery_pct": 80.0, "odometer_m": 1000.0 + seq}},
                      separators=(",", ":")).encode()


class _Vehicle:
    def __init__(self, vehicle_id: str, password: str | None, spec: LoadSpec, result: LoadResult) -> None:
        self.vehicle_id, self.spec, self.result = vehicle_id, spec, result
        self.topic = topics.vehicle_topic(vehicle_id, topics.Kind.TELEMETRY)
        self.seq = 0
        self.inflight: dict[int, float] = {}
        self.connected = False
        self.refused = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=vehicle_id, clean_session=True)
        self.client.max_inflight_messages_set(spec.window)
        self.client.max_queued_messages_set(0)
        if password is not None:
            self.client.username_pw_set(vehicle_id, password)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = not reason_code.is_failure
        self.refused = reason_code.is_failure

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        sent_at = self.inflight.pop(mid, None)
        if sent_at is not None:
            self.result.acked += 1
            self.result.latencies_ms.append((time.perf_counter() - sent_at) * 1000.0)
        self.fill()

    def fill(self) -> None:
        while len(self.inflight) < self.spec.window and self.seq < self.spec.messages:
            self.seq += 1
            info = self.client.publish(self.topic, telemetry_payload(self.seq), qos=self.spec.qos)
            self.result.sent += 1
            if self.spec.qos == 0:
                self.result.acked += 1
                continue
            self.inflight[info.mid] = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.seq >= self.spec.messages and not self.inflight


def _worker(spec: LoadSpec, credentials: list[tuple[str, str | None]], start_at: float, queue) -> None:
    result = LoadResult()
    pool = ClientPool()
    vehicles = [_Vehicle(vid, pw, spec, result) for vid, pw in credentials]
    for vehicle in vehicles:
        vehicle.client.connect(spec.host, spec.port, keepalive=60)
        pool.add(vehicle.client)
    pool.run_until(lambda: all(v.connected or v.refused for v in vehicles), time.monotonic() + 60)
    result.connect_failures = sum(not v.connected for v in vehicles)
    live = [v for v in vehicles if v.connected]
    while time.time() < start_at:
        pool.run_once(min(0.05, max(0.0, start_at - time.time())))
    result.started = time.perf_counter()
    wall_started = time.time()
    for vehicle in live:
        vehicle.fill()
    finished = pool.run_until(lambda: all(v.done for v in live), time.monotonic() + spec.timeout_s)
    if spec.qos == 0:
        pool.run_until(lambda: not any(c.want_write() for c in pool.clients), time.monotonic() + 10)
    result.finished = time.perf_counter()
    result.timed_out = not finished
    pool.close()
    queue.put({"sent": result.sent, "acked": result.acked, "seconds": result.seconds,
               "wall_started": wall_started, "latencies_ms": result.latencies_ms,
               "connect_failures": result.connect_failures, "timed_out": result.timed_out})


def run(spec: LoadSpec) -> dict:
    """Run the load; returns totals, throughput (acked/s over the slowest worker's span) and latency percentiles."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    slices = [spec.credentials[i::spec.processes] for i in range(spec.processes)]
    start_at = time.time() + 2.0 + len(spec.credentials) / 500.0
    workers = [ctx.Process(target=_worker, args=(spec, part, start_at, queue), daemon=True)
               for part in slices if part]
    for worker in workers:
        worker.start()
    parts = [queue.get(timeout=spec.timeout_s + 120) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
    latencies = sorted(x for part in parts for x in part["latencies_ms"])
    seconds = max(part["seconds"] for part in parts)
    acked = sum(part["acked"] for part in parts)
    return {
        "vehicles": len(spec.credentials), "sent": sum(p["sent"] for p in parts), "acked": acked,
        "seconds": round(seconds, 3), "acked_per_s": round(acked / seconds, 1),
        "wall_started": min(p["wall_started"] for p in parts),
        "latency_ms": percentiles(latencies),
        "connect_failures": sum(p["connect_failures"] for p in parts),
        "timed_out": any(p["timed_out"] for p in parts),
    }


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    values = sorted(values)

    def pick(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 2)

    return {"p50": pick(0.50), "p99": pick(0.99), "max": round(values[-1], 2)}
