"""The audit log, readable by admins (filters, cursor pages), and append-only for the application role: the api's
own database role can neither change nor delete a timeline or audit row, by grant and by trigger."""
from __future__ import annotations

import psycopg2
import pytest

from tests.support.operators import unique


def test_admins_read_the_audit_log_with_filters_and_pages(admin, operator, enroll):
    vehicle = enroll(connect=False)
    operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-stop", json={"reason": "audit me"})
    operator.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/emergency-release", json={"reason": "done"})
    assert operator.get("/api/v1/audit").status_code == 403

    mine = admin.get("/api/v1/audit", params={"target_type": "vehicle", "target_id": vehicle.vehicle_id})
    assert mine.status_code == 200, mine.text
    actions = [(e["action"], e["actor_id"]) for e in mine.json()["items"]]
    assert actions == [("emergency.release", operator.username), ("emergency.stop", operator.username),
                       ("vehicle.register", vehicle.vehicle_id), ("vehicle.create", operator.username)], \
        "newest first"
    stops = admin.get("/api/v1/audit", params={"actor": operator.username, "action": "emergency.stop"}).json()
    [stop] = stops["items"]
    assert stop["detail"]["reason"] == "audit me" and stop["target_id"] == vehicle.vehicle_id

    pages, cursor = [], None
    while True:
        params = {"target_id": vehicle.vehicle_id, "limit": 1, **({"cursor": cursor} if cursor else {})}
        page = admin.get("/api/v1/audit", params=params).json()
        pages += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [e["id"] for e in mine.json()["items"]], "cursor pages cover the same rows once"
    window = admin.get("/api/v1/audit", params={"target_id": vehicle.vehicle_id, "from": stop["at"],
                                                "to": mine.json()["items"][0]["at"]}).json()
    assert [e["action"] for e in window["items"]] == ["emergency.stop"]


@pytest.mark.parametrize("cursor", ["garbage", "eHx5", "YXVkaXR8LTE", "YXVkaXR8eA"])
def test_a_crafted_audit_cursor_is_a_400(admin, cursor):
    response = admin.get("/api/v1/audit", params={"cursor": cursor})
    assert response.status_code == 400 and response.json()["code"] == "invalid_cursor"


@pytest.mark.parametrize("statement", [
    "UPDATE audit_log SET action = 'forged' WHERE id = (SELECT max(id) FROM audit_log)",
    "DELETE FROM audit_log WHERE id = (SELECT max(id) FROM audit_log)",
    "TRUNCATE audit_log",
    "UPDATE mission_events SET event = 'forged' WHERE id = (SELECT max(id) FROM mission_events)",
    "DELETE FROM mission_events WHERE id = (SELECT max(id) FROM mission_events)",
    "TRUNCATE mission_events CASCADE",
    "DELETE FROM missions WHERE id = (SELECT mission_id FROM mission_events ORDER BY id DESC LIMIT 1)",
])
def test_the_application_role_cannot_change_history(stack, operator, enroll, statement):
    vehicle = enroll(connect=False)
    operator.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": unique("m"),
                                            "waypoints": [{"lat": 1, "lon": 2}]})
    conn = psycopg2.connect(stack.database_url)   # the api's own role, the tables' owner
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, (SELECT tableowner FROM pg_tables WHERE tablename = 'audit_log')")
            user, owner = cur.fetchone()
            assert user == owner == "fleet"
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)
    finally:
        conn.rollback()
        conn.close()


def test_the_trigger_refuses_even_when_the_grant_comes_back(stack):
    conn = psycopg2.connect(stack.database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("GRANT UPDATE, DELETE, TRUNCATE ON audit_log TO CURRENT_USER")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="append-only"):
                cur.execute("DELETE FROM audit_log WHERE id = (SELECT max(id) FROM audit_log)")
    finally:
        conn.rollback()   # the grant goes with it
        conn.close()
