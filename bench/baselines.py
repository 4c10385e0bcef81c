"""Baseline consumers for the ingest benchmark: what a team would write without a rule engine.

* counting subscriber: receives and counts (the broker + publisher ceiling, nothing stored);
* naive subscriber: one INSERT and COMMIT per message, in paho's callback;
* batched subscriber: a DB thread drains a queue into multi-row INSERTs (up to 500 rows or 20 ms);
* COPY: the same rows loaded with COPY (the storage ceiling).

None of them authenticates vehicles, checks ACLs, validates envelopes, deduplicates, or acknowledges after the
commit: they are the cheap path the stand-in is compared against.
"""
from __future__ import annotations

import io
import json
import queue
import threading
import time
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import psycopg2
from psycopg2.extras import execute_values

from bench.loadgen import percentiles, telemetry_payload

TABLE_SQL = """
DROP TABLE IF EXISTS bench_telemetry;
CREATE TABLE bench_telemetry (
    vehicle_id  text NOT NULL,
    msg_id      text NOT NULL,
    seq         bigint,
    ts          timestamptz NOT NULL,
    lat         double precision,
    lon         double precision,
    speed_mps   real,
    battery_pct real,
    data        jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vehicle_id, msg_id)
);
"""
INSERT_ONE = ("INSERT INTO bench_telemetry (vehicle_id, msg_id, seq, ts, lat, lon, speed_mps, battery_pct, data) "
              "VALUES (%s, %s, %s, to_timestamp(%s / 1000.0), %s, %s, %s, %s, %s)")
INSERT_MANY = ("INSERT INTO bench_telemetry (vehicle_id, msg_id, seq, ts, lat, lon, speed_mps, battery_pct, data) "
               "VALUES %s")
ROW_TEMPLATE = "(%s, %s, %s, to_timestamp(%s / 1000.0), %s, %s, %s, %s, %s)"
TELEMETRY_FILTER = "fleet/v1/+/telemetry"


def create_table(dsn: str) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(TABLE_SQL)
    conn.close()


def count_rows(dsn: str) -> int:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM bench_telemetry")
        n = cur.fetchone()[0]
    conn.close()
    return n


def _row(topic: str, payload: bytes) -> tuple:
    envelope = json.loads(payload)
    data = envelope["data"]
    return (topic.split("/")[2], envelope["msg_id"], envelope["seq"], envelope["ts"], data["lat"], data["lon"],
            data.get("speed_mps"), data.get("battery_pct"), json.dumps(data))


class Subscriber:
    """A paho subscriber on the telemetry filter; ``kind`` is counting, naive or batched."""

    def __init__(self, kind: str, port: int, dsn: str | None) -> None:
        self.kind, self.port, self.dsn = kind, port, dsn
        self.received = 0
        self.stored = 0
        self.last_stored_at = 0.0
        self.latencies_ms: list[float] = []
        self.errors = 0
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._db_thread: threading.Thread | None = None
        self.conn = psycopg2.connect(dsn) if dsn and kind == "naive" else None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{kind}-subscriber",
                                  clean_session=True)
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self._subscribed.set()

    def __enter__(self) -> Subscriber:
        self.client.connect("127.0.0.1", self.port)
        self.client.subscribe(TELEMETRY_FILTER, qos=1)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("baseline subscriber could not subscribe")
        if self.kind == "batched":
            self._db_thread = threading.Thread(target=self._drain, daemon=True)
            self._db_thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.client.loop_stop()
        self.client.disconnect()
        if self._db_thread:
            self._db_thread.join(timeout=30)
        if self.conn:
            self.conn.close()

    def _on_message(self, client, userdata, message) -> None:
        self.received += 1
        if self.kind == "counting":
            self._mark_stored([message.payload])
        elif self.kind == "naive":
            try:
                with self.conn.cursor() as cur:
                    cur.execute(INSERT_ONE, _row(message.topic, message.payload))
                self.conn.commit()
                self._mark_stored([message.payload])
            except psycopg2.Error:
                self.conn.rollback()
                self.errors += 1
        else:
            self._queue.put((message.topic, message.payload))

    def _drain(self) -> None:
        conn = psycopg2.connect(self.dsn)
        try:
            while not (self._stop.is_set() and self._queue.empty()):
                try:
                    batch = [self._queue.get(timeout=0.1)]
                except queue.Empty:
                    continue
                deadline = time.monotonic() + 0.02
                while len(batch) < 500 and time.monotonic() < deadline:
                    try:
                        batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                    except queue.Empty:
                        break
                try:
                    with conn.cursor() as cur:
                        execute_values(cur, INSERT_MANY, [_row(t, p) for t, p in batch], template=ROW_TEMPLATE,
                                       page_size=500)
                    conn.commit()
                    self._mark_stored([p for _, p in batch])
                except psycopg2.Error:
                    conn.rollback()
                    self.errors += len(batch)
        finally:
            conn.close()

    def _mark_stored(self, payloads: list[bytes]) -> None:
        now_ms = time.time() * 1000.0
        for payload in payloads:
            self.latencies_ms.append(now_ms - json.loads(payload)["ts"])
        self.stored += len(payloads)
        self.last_stored_at = time.time()

    def wait_for(self, expected: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stored >= expected:
                return True
            time.sleep(0.05)
        return self.stored >= expected

    def summary(self, wall_started: float) -> dict:
        seconds = max(self.last_stored_at - wall_started, 1e-9)
        return {"received": self.received, "stored": self.stored, "errors": self.errors,
                "seconds": round(seconds, 3), "stored_per_s": round(self.stored / seconds, 1),
                "latency_ms": percentiles(self.latencies_ms)}


def copy_rows(dsn: str, vehicles: list[str], messages: int) -> dict:
    """COPY the same number of rows the load generator sends; rows/s."""
    buffer = io.StringIO()
    for vehicle in vehicles:
        for seq in range(1, messages + 1):
            row = _row(f"fleet/v1/{vehicle}/telemetry", telemetry_payload(seq))
            ts = datetime.fromtimestamp(row[3] / 1000.0, UTC).isoformat()
            fields = [row[0], row[1], str(row[2]), ts, *(str(x) for x in row[4:8]), row[8]]
            buffer.write("\t".join(f.replace("\\", "\\\\") for f in fields) + "\n")
    buffer.seek(0)
    conn = psycopg2.connect(dsn)
    try:
        started = time.perf_counter()
        with conn.cursor() as cur:
            cur.copy_expert("COPY bench_telemetry (vehicle_id, msg_id, seq, ts, lat, lon, speed_mps, battery_pct, "
                            "data) FROM STDIN", buffer)
        conn.commit()
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    rows = len(vehicles) * messages
    return {"stored": rows, "seconds": round(seconds, 3), "stored_per_s": round(rows / seconds, 1)}
