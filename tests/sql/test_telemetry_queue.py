"""The telemetry queue (sql/100_telemetry_queue.sql): the broker appends, ``ingest.drain_telemetry()`` applies in sets.

The set path must give exactly what applying each message on its own, in arrival order, gives: the same stored
points, the same latest state, the same dead letters with the same reasons. The main test here drives two copies of
one vehicle fleet with the same random stream — one message at a time through the per-message path, and queued then
drained in sets of several sizes — and compares everything the ingest writes."""
from __future__ import annotations

import random
import uuid

import psycopg2
import pytest

from tests.sql.conftest import FLEET, Inbox, b64, envelope, now_ms

VEHICLES = ("v1", "v2", "v3", "v4")     # v4 is revoked
COMPLETE = {"heading_deg": 90.0, "speed_mps": 2.5, "battery_pct": 80.0, "odometer_m": 1000.0}


def _stream(seed: int, n: int, base_ms: int, *, clean: bool) -> list[tuple[str, str | None, int]]:
    """(vehicle, payload base64, received ms) in arrival order: points in and out of order, redeliveries, ties,
    an extra number; unless ``clean``, also missing fields, skewed clocks, batches and every kind of bad
    message."""
    rng = random.Random(seed)
    sent: dict[str, list[dict]] = {v: [] for v in VEHICLES}
    out: list[tuple[str, str | None, int]] = []
    for i in range(n):
        vid = rng.choice(VEHICLES)
        received = base_ms + i * 10
        ts = received - rng.randint(0, 2_000)
        data = {"lat": round(rng.uniform(-89, 89), 5), "lon": round(rng.uniform(-179, 179), 5)}
        if clean or rng.random() < 0.7:
            data |= {k: round(v * rng.uniform(0.5, 1.2), 2) for k, v in COMPLETE.items()}
        else:   # some optional fields, some null
            data |= {k: (None if rng.random() < 0.3 else v) for k, v in COMPLETE.items() if rng.random() < 0.5}
        kind = rng.random()
        if clean and (0.17 <= kind < 0.23 or 0.26 <= kind < 0.43):
            kind = 1.0
        if kind < 0.08 and sent[vid]:
            message = rng.choice(sent[vid])                                   # a QoS 1 redelivery
        elif kind < 0.12 and sent[vid]:
            tie = rng.choice(sent[vid])                                       # same (ts, seq), another msg_id
            message = dict(tie, msg_id=str(uuid.uuid4()), data=data)
        elif kind < 0.17:
            message = envelope(data, seq=rng.randint(0, 5), ts=ts - 60_000)   # older than what we have
        elif kind < 0.20:
            message = envelope(data, seq=i, ts=received + 10 * 60_000)      # a clock ahead of the broker
        elif kind < 0.23:
            message = envelope(data, seq=i, ts=received - 10 * 60_000)      # a clock behind
        elif kind < 0.26:
            message = envelope(data | {"motor_temp_c": 41.5}, seq=i, ts=ts)  # an extra number: kept
        elif kind < 0.28:
            message = envelope(data | {"note": "hi"}, seq=i, ts=ts)          # an extra string: dead letter
        elif kind < 0.30:
            message = envelope(dict(data, lat=91.0), seq=i, ts=ts)
        elif kind < 0.32:
            message = envelope(dict(data, battery_pct=150), seq=i, ts=ts)
        elif kind < 0.34:
            message = envelope(dict(data, speed_mps="fast"), seq=i, ts=ts)
        elif kind < 0.36:
            message = envelope(data, seq=i, ts=ts, vehicle_id="someone-else")
        elif kind < 0.38:
            message = {"v": 1, "batch": [envelope(dict(data, **COMPLETE), seq=i * 10 + k, ts=ts + k)
                                         for k in range(3)]}
        elif kind < 0.40:
            out.append((vid, b64(b"{not json"), received))
            continue
        elif kind < 0.41:
            out.append((vid, "!!not base64!!", received))
            continue
        elif kind < 0.42:
            out.append((vid, b64(b"\xff\xfe\xfd"), received))
            continue
        elif kind < 0.43:
            message = envelope(data, seq=i, ts=ts, v=2)
        else:
            message = envelope(data, seq=i, ts=ts)
        if "batch" not in message and message.get("v") == 1:
            sent[vid].append(message)
        out.append((vid, b64(message), received))
    return out


def _fleet(conn, prefix: str) -> None:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO fleets (id, name) VALUES (%s, 'Fleet A') ON CONFLICT DO NOTHING", (FLEET,))
        for vid in VEHICLES:
            cur.execute("INSERT INTO vehicles (id, fleet_id, status, registered_at) VALUES (%s, %s, %s, now())",
                        (prefix + vid, FLEET, "revoked" if vid == "v4" else "active"))


def _written(q, prefix: str) -> dict:
    """Everything the ingest wrote for one copy of the fleet, with the copy's prefix taken off the ids."""
    n = len(prefix)
    points = q("SELECT substr(vehicle_id, %s) AS v, ts, received_at, seq, msg_id, lat, lon, heading_deg, speed_mps, "
               "battery_pct, odometer_m, extra, clock_skewed FROM telemetry WHERE vehicle_id LIKE %s "
               "ORDER BY 1, ts, msg_id", (n + 1, prefix + "%"))
    states = q("SELECT substr(vehicle_id, %s) AS v, telemetry_ts, telemetry_seq, telemetry_received_at, lat, lon, "
               "heading_deg, speed_mps, battery_pct, odometer_m, clock_skewed, last_seen_at, online "
               "FROM vehicle_state WHERE vehicle_id LIKE %s ORDER BY 1", (n + 1, prefix + "%"))
    dead = q("SELECT substr(clientid, %s) AS v, reason, detail, received_at, payload FROM rejected_messages "
             "WHERE clientid LIKE %s ORDER BY id", (n + 1, prefix + "%"))
    return {"points": points, "states": states, "dead": dead}


@pytest.mark.parametrize(("seed", "set_size", "clean"),
                         [(1, 1000, False), (2, 7, False), (3, 1, False), (4, 50, False), (5, 1000, True),
                          (6, 20, True)],
                         ids=["seed1-sets1000", "seed2-sets7", "seed3-sets1", "seed4-sets50", "seed5-sets1000-clean",
                              "seed6-sets20-clean"])
def test_sets_give_exactly_what_one_message_at_a_time_gives(conn, ingest_conn, q, seed, set_size, clean):
    _fleet(conn, "a-")
    _fleet(conn, "b-")
    stream = _stream(seed, 400, now_ms() - 60_000, clean=clean)
    with conn.cursor() as cur:       # copy a: each message on its own, in arrival order
        for vid, payload, received in stream:
            cur.execute("SELECT ingest.apply_telemetry_row(%s, %s, %s, %s)",
                        ("a-" + vid, f"fleet/v1/a-{vid}/telemetry", payload, received))
    inbox = Inbox(ingest_conn, conn)  # copy b: queued, then drained in sets
    with ingest_conn.cursor() as cur:
        for vid, payload, received in stream:
            cur.execute("INSERT INTO ingest.telemetry_inbox (clientid, topic, payload_b64, received_at_ms) "
                        "VALUES (%s, %s, %s, %s)", ("b-" + vid, f"fleet/v1/b-{vid}/telemetry", payload, received))
    drained = inbox.drain(set_size)
    assert drained["taken"] == len(stream)
    assert drained["in_sets"] > 0, "the set path must be exercised"
    if clean:   # the set path leaves only the revoked vehicle's (dead letters)
        assert drained["in_sets"] == sum(1 for vid, _, _ in stream if vid != "v4"), drained
    assert inbox.drain()["taken"] == 0
    a, b = _written(q, "a-"), _written(q, "b-")
    assert len(a["points"]) > 100 and (clean or len(a["dead"]) > 20), "the stream must exercise both outcomes"
    assert b["points"] == a["points"]
    assert b["states"] == a["states"]
    assert [(d["v"], d["reason"], d["detail"]) for d in b["dead"]] == [(d["v"], d["reason"], d["detail"])
                                                                       for d in a["dead"]]
    assert [d["payload"] and bytes(d["payload"]) for d in b["dead"]] == \
        [d["payload"] and bytes(d["payload"]) for d in a["dead"]]
    assert q("SELECT count(*) AS n FROM ingest.parked")[0]["n"] == 0


def test_queued_telemetry_waits_for_the_drain_and_leaves_the_queue_once_applied(inbox, vehicles, q):
    inbox.telemetry(envelope(), drain=False)
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 0
    summary = q("SELECT queued, oldest_s FROM ingest.telemetry_queue_summary()")[0]
    assert summary["queued"] == 1 and summary["oldest_s"] >= 0
    assert inbox.drain() == {"taken": 1, "in_sets": 1, "one_by_one": 0}
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 1
    assert q("SELECT queued, oldest_s FROM ingest.telemetry_queue_summary()")[0] == {"queued": 0, "oldest_s": 0.0}


def test_drains_take_turns(db_url, inbox, vehicles, q):
    # one drain holds the turn (its transaction is open): another takes nothing and does not wait
    inbox.telemetry(envelope(), drain=False)
    first = psycopg2.connect(db_url)
    try:
        with first.cursor() as cur:
            cur.execute("SELECT taken FROM ingest.drain_telemetry()")
            assert cur.fetchone()[0] == 1
            inbox.telemetry(envelope(), drain=False)
            assert inbox.drain() == {"taken": 0, "in_sets": 0, "one_by_one": 0}
        first.commit()
    finally:
        first.close()
    assert inbox.drain() == {"taken": 1, "in_sets": 1, "one_by_one": 0}
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 2


def test_one_bad_message_sends_only_its_neighbours_one_by_one(inbox, vehicles, ingest_conn, q):
    # 200 messages, the first not base64: the set statement fails on it, the set is halved around it down to a
    # part of 12 (200 → 100 → 50 → 25 → 12), and only that part takes the per-message path
    inbox.telemetry(None, raw_b64="!!not base64!!", drain=False)
    for i in range(199):
        inbox.telemetry(envelope(dict(lat=48.0, lon=11.0, **COMPLETE), seq=i + 1, ts=now_ms() - 1000 + i),
                        drain=False)
    assert inbox.drain() == {"taken": 200, "in_sets": 188, "one_by_one": 12}
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 199
    assert [r["reason"] for r in q("SELECT reason FROM rejected_messages")] == ["bad_base64"]


def test_a_held_row_lock_parks_that_vehicle_and_the_next_sets_go_on_without_waiting(db_url, inbox, vehicles, q):
    holder = psycopg2.connect(db_url)
    try:
        with holder.cursor() as cur:      # an operator's transaction holds the first vehicle's state row
            cur.execute("SELECT 1 FROM vehicle_state WHERE vehicle_id = %s FOR UPDATE", (vehicles[0],))
        for vid in vehicles:
            inbox.telemetry(envelope(seq=1), clientid=vid, drain=False)
        assert inbox.drain() == {"taken": 2, "in_sets": 0, "one_by_one": 2}     # the set met the lock
        assert [r["clientid"] for r in q("SELECT clientid FROM ingest.parked")] == [vehicles[0]]
        for vid in vehicles:
            inbox.telemetry(envelope(seq=2), clientid=vid, drain=False)
        # the parked vehicle goes one by one (behind its parked point, without touching the lock); the other in the set
        assert inbox.drain() == {"taken": 2, "in_sets": 1, "one_by_one": 1}
    finally:
        holder.close()
    assert q("SELECT vehicle_id, count(*) AS n FROM telemetry GROUP BY 1") == [{"vehicle_id": vehicles[1], "n": 2}]
    assert q("SELECT applied FROM ingest.retry_parked()")[0]["applied"] == 2
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 4
