"""An enrolling client that repeats rejected registration requests (authsvc/registration.py): its rejections are
audited up to AUTHSVC_REGISTRATION_REJECTIONS_PER_MINUTE (10) a minute, then it is disconnected. Before: one wrote
1,500 audit rows in 4.6 s and stayed connected."""
from __future__ import annotations

import psycopg2
import psycopg2.extras

from fleetcore import topics
from tests.support.operators import unique
from tests.support.reliability import record
from tests.support.vehicle import MqttVehicle
from tests.support.waiting import wait_until

CAP = 10   # the default of AUTHSVC_REGISTRATION_REJECTIONS_PER_MINUTE


def _audited(stack, vehicle_id: str) -> int:
    with psycopg2.connect(stack.database_url) as conn, conn.cursor(cursor_factory=psycopg2.extras.DictCursor) as cur:
        cur.execute("SELECT count(*) FROM audit_log WHERE target_type = 'vehicle' AND target_id = %s "
                    "AND action = 'vehicle.register_rejected'", (vehicle_id,))
        count = cur.fetchone()[0]
    conn.close()
    return count


def test_an_enrolling_client_repeating_rejected_requests_is_capped_and_disconnected(stack, operator):
    vehicle_id = unique("veh")
    response = operator.post("/api/v1/vehicles", json={"id": vehicle_id, "fleet_id": operator.fleet})
    assert response.status_code == 201, response.text
    vehicle = MqttVehicle("127.0.0.1", stack.config.ports.mqtt, vehicle_id)
    vehicle.connect_enrolling(response.json()["enrollment"]["token"])
    try:
        request_topic = topics.vehicle_topic(vehicle_id, topics.Kind.REGISTER_REQUEST)
        for n in range(1, CAP + 1):
            vehicle.publish_raw(request_topic, b"not a registration request")
            wait_until(lambda n=n: _audited(stack, vehicle_id) == n, message=f"rejection {n} audited")
        assert vehicle.connected, "within the cap the client stays connected (it may correct its request)"
        vehicle.client.publish(request_topic, b"not a registration request", qos=1)
        wait_until(lambda: not vehicle.connected, message="the flooding enrolling client is disconnected")
        assert _audited(stack, vehicle_id) == CAP
    finally:
        vehicle.close()
    record("security", "an enrolling client repeating rejected registrations", requests=CAP + 1,
           audit_rows=CAP, disconnected=True)
