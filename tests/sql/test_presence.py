"""Presence: broker connect/disconnect events, the retained connection message (Last Will), liveness timeout."""
from __future__ import annotations

from tests.sql.conftest import VEHICLE, envelope, now_ms


def state(q) -> dict:
    return q("SELECT * FROM vehicle_state WHERE vehicle_id = %s", (VEHICLE,))[0]


def test_connect_and_disconnect(inbox, vehicles, q):
    c1 = now_ms() - 60_000
    inbox.presence("client.connected", at_ms=c1, connected_at_ms=c1)
    s = state(q)
    assert s["online"] is True and int(s["connected_at"].timestamp() * 1000) == c1
    inbox.presence("client.disconnected", reason="normal", at_ms=c1 + 5000, connected_at_ms=c1)
    s = state(q)
    assert s["online"] is False and s["disconnect_reason"] == "normal"
    assert int(s["disconnected_at"].timestamp() * 1000) == c1 + 5000


def test_a_stale_disconnect_does_not_take_a_reconnected_vehicle_offline(inbox, vehicles, q):
    c1, c2 = now_ms() - 60_000, now_ms() - 30_000
    inbox.presence("client.connected", at_ms=c1, connected_at_ms=c1)
    inbox.presence("client.connected", at_ms=c2, connected_at_ms=c2)            # reconnect (takeover)
    inbox.presence("client.disconnected", reason="keepalive_timeout", at_ms=c2 + 10, connected_at_ms=c1)
    assert state(q)["online"] is True, "the old connection's disconnect arrived late"
    inbox.presence("client.disconnected", reason="normal", at_ms=c2 + 20, connected_at_ms=c2)
    assert state(q)["online"] is False


def test_a_connect_processed_after_its_own_disconnect_does_not_bring_the_vehicle_back(inbox, vehicles, q):
    c1 = now_ms() - 60_000
    inbox.presence("client.disconnected", reason="normal", at_ms=c1 + 100, connected_at_ms=c1)
    inbox.presence("client.connected", at_ms=c1, connected_at_ms=c1)
    assert state(q)["online"] is False
    c2 = c1 + 1000
    inbox.presence("client.connected", at_ms=c2, connected_at_ms=c2)
    assert state(q)["online"] is True


def test_only_vehicles_have_presence(inbox, vehicles, q):
    inbox.presence("client.connected", role="enrolling")
    inbox.presence("client.connected", role=None)
    assert state(q)["online"] is False
    inbox.presence("client.connected", clientid="ghost")
    assert [r["reason"] for r in q("SELECT reason FROM rejected_messages")] == ["unknown_vehicle"]


def test_connected_notifies_fleet_vehicle_online(inbox, vehicles, listen):
    online = listen("fleet_vehicle_online")
    inbox.presence("client.connected", connected_at_ms=now_ms())
    assert online.received() == [{"vehicle_id": VEHICLE}]
    inbox.presence("client.connected", connected_at_ms=now_ms() - 60_000)            # stale: not applied
    inbox.presence("client.connected", role="enrolling")
    assert online.received() == []


def test_the_connection_message_and_its_last_will(inbox, vehicles, q):
    c1 = now_ms() - 60_000
    inbox.presence("client.connected", at_ms=c1, connected_at_ms=c1)
    inbox.connection(envelope({"state": "ONLINE"}, seq=1), received_at_ms=c1 + 10)
    s = state(q)
    assert (s["online"], s["connection_state"]) == (True, "ONLINE")
    # the Last Will carries the ts of the connect it was set at; it is ordered by broker receive time
    inbox.connection(envelope({"state": "CONNECTIONBROKEN"}, seq=0, ts=c1), received_at_ms=c1 + 20_000)
    s = state(q)
    assert (s["online"], s["connection_state"], s["disconnect_reason"]) == (False, "CONNECTIONBROKEN",
                                                                             "connectionbroken")
    # clearing the retained message is not a state and not an error
    inbox.connection(None, raw_b64="")
    assert state(q)["connection_state"] == "CONNECTIONBROKEN"
    assert q("SELECT count(*) AS n FROM rejected_messages")[0]["n"] == 0


def test_a_last_will_of_an_earlier_connection_does_not_take_the_new_one_offline(inbox, vehicles, q):
    c1, c2 = now_ms() - 60_000, now_ms() - 30_000
    inbox.presence("client.connected", at_ms=c2, connected_at_ms=c2)
    inbox.connection(envelope({"state": "CONNECTIONBROKEN"}, seq=0, ts=c1), received_at_ms=c2 - 1000)
    assert state(q)["online"] is True
    inbox.connection(envelope({"state": "ONLINE"}, seq=1), received_at_ms=c2 - 2000)    # older than the will
    assert state(q)["connection_state"] == "CONNECTIONBROKEN", "connection messages are ordered by receive time"


def test_a_silent_vehicle_is_marked_offline_by_maintenance(inbox, vehicles, q, conn):
    inbox.presence("client.connected", at_ms=now_ms() - 600_000, connected_at_ms=now_ms() - 600_000)
    inbox.presence("client.connected", clientid="veh-2", connected_at_ms=now_ms() - 600_000)
    inbox.telemetry(envelope({"lat": 1, "lon": 1}), clientid="veh-2")                 # veh-2 is talking
    with conn.cursor() as cur:
        cur.execute("SELECT fleet_maintenance()")
        summary = cur.fetchone()[0]
    assert summary["marked_offline"] == [VEHICLE]
    s = state(q)
    assert (s["online"], s["disconnect_reason"]) == (False, "liveness_timeout")
    assert q("SELECT online FROM vehicle_state WHERE vehicle_id = 'veh-2'")[0]["online"] is True
    # its real disconnect, arriving later, is still accepted
    inbox.presence("client.disconnected", reason="keepalive_timeout", connected_at_ms=now_ms() - 600_000)
    assert state(q)["disconnect_reason"] == "keepalive_timeout"
