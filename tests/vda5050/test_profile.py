"""The VDA 5050 2.0 profile as a VDA vehicle (paho) and an operator (HTTP) meet it (docs/VDA5050.md): identity and
ACL, inbound state / connection / factsheet through the broker's rules into the SQL ingest, schema validation
with dead-lettering, and a mission driven as an order. The same scenario against an independent implementation
is tests/vda5050/test_interop.py."""
from __future__ import annotations

import json
import math

import jsonschema
import pytest

from fleetcore import topics, vda5050
from tests.support.database import rejected, rows
from tests.support.vda5050 import ORIGIN, connected_vda_vehicle
from tests.support.vehicle import ConnectRefused
from tests.support.waiting import wait_until

STATE = topics.VdaSubtopic.STATE


@pytest.fixture
def agv(operator, stack):
    vehicle = connected_vda_vehicle(operator, stack)
    yield vehicle
    vehicle.close()


def vehicle_view(operator, vehicle_id: str) -> dict:
    return operator.get(f"/api/v1/vehicles/{vehicle_id}").json()


def test_state_becomes_position_health_and_presence(agv, operator):
    """x 100 m east, y 50 m north of the map origin; a WARNING error; battery 64 %."""
    agv.state(agvPosition={"x": 100.0, "y": 50.0, "theta": math.pi / 2, "mapId": "site", "positionInitialized": True},
              velocity={"vx": 0.0, "vy": 1.5, "omega": 0.0}, batteryState={"batteryCharge": 64.0, "charging": False},
              errors=[{"errorType": "bumperWarning", "errorLevel": "WARNING", "errorDescription": "dirty sensor",
                       "errorReferences": []}])
    view = wait_until(lambda: (v := vehicle_view(operator, agv.vehicle_id))["health"]["health"] and v)
    assert view["protocol"] == "vda5050"
    assert view["vda5050"]["serial_number"] == agv.serial_number
    assert view["presence"]["online"] is True and view["presence"]["connection_state"] == "ONLINE"
    telemetry = view["telemetry"]
    assert telemetry["lat"] == pytest.approx(ORIGIN[0] + math.degrees(50 / vda5050.EARTH_RADIUS_M), abs=1e-7)
    assert telemetry["lon"] == pytest.approx(
        ORIGIN[1] + math.degrees(100 / (vda5050.EARTH_RADIUS_M * math.cos(math.radians(ORIGIN[0])))), abs=1e-7)
    assert telemetry["heading_deg"] == pytest.approx(0.0)   # theta π/2 (map y = north) is heading north
    assert telemetry["speed_mps"] == pytest.approx(1.5)
    assert telemetry["battery_pct"] == pytest.approx(64.0)
    assert view["health"]["health"] == "WARNING" and view["health"]["mode"] == "AUTO"
    assert view["health"]["errors"] == [{"code": "bumperWarning", "level": "WARNING", "message": "dirty sensor",
                                         "references": []}]
    assert view["health"]["estop"] is False


def test_connection_broken_last_will_takes_it_offline(agv, operator):
    agv.drop()  # the broker publishes the Last Will: connection CONNECTIONBROKEN, retained
    view = wait_until(lambda: (v := vehicle_view(operator, agv.vehicle_id))["presence"]["connection_state"]
                      == "CONNECTIONBROKEN" and v)
    assert view["presence"]["online"] is False


def test_acl_allows_only_its_own_vda_topics_in_the_standards_direction(agv, stack, operator):
    other = topics.vda_topic("Acme", "someone-else", STATE)
    agv.publish_raw(other, "{}", qos=1)
    agv.publish_raw(agv.topic(topics.VdaSubtopic.ORDER), "{}", qos=1)          # only master control sends orders
    agv.publish_raw(topics.vehicle_topic(agv.vehicle_id, topics.Kind.TELEMETRY), "{}", qos=1)  # not our protocol
    assert agv.subscribe(agv.topic(STATE), qos=0) == [0x80]                     # its own state is not for it
    assert agv.subscribe(topics.vda_topic("Acme", "someone-else", topics.VdaSubtopic.ORDER), qos=0) == [0x80]
    assert agv.subscribe("uagv/v2/Acme/+/order", qos=0) == [0x80]
    denied = wait_until(lambda: len(r := rejected(stack.database_url, agv.vehicle_id)) >= 6 and r)
    assert sorted((r["topic"], r["reason"]) for r in denied) == sorted([
        (other, "acl_denied"), (agv.topic(topics.VdaSubtopic.ORDER), "acl_denied"),
        (topics.vehicle_topic(agv.vehicle_id, topics.Kind.TELEMETRY), "acl_denied"),
        (agv.topic(STATE), "acl_denied"), (topics.vda_topic("Acme", "someone-else", topics.VdaSubtopic.ORDER),
                                           "acl_denied"), ("uagv/v2/Acme/+/order", "acl_denied")])
    # and its own topics still work
    agv.state(batteryState={"batteryCharge": 33.0, "charging": True})
    wait_until(lambda: vehicle_view(operator, agv.vehicle_id)["telemetry"]["battery_pct"] == 33.0)


@pytest.mark.parametrize(("change", "reason", "detail"), [
    (lambda s: s.pop("nodeStates"), "missing_field", "state.nodeStates"),
    (lambda s: s.update(driving="yes"), "wrong_type", "state.driving must be boolean"),
    (lambda s: s.update(operatingMode="TURBO"), "invalid_value", "state.operatingMode \"TURBO\" not in its enum"),
    (lambda s: s["batteryState"].update(batteryCharge="full"), "wrong_type", "state.batteryState.batteryCharge"),
    (lambda s: s.update(errors=[{"errorType": "x", "errorLevel": "SEVERE", "errorReferences": []}]),
     "invalid_value", "state.errors[0].errorLevel"),
    (lambda s: s.update(timestamp="yesterday"), "invalid_value", "state.timestamp is not an ISO 8601 date-time"),
    (lambda s: s.update(serialNumber="not-me"), "vehicle_id_mismatch", "payload names Acme/not-me"),
])
def test_invalid_state_is_dead_lettered_with_a_reason(agv, stack, operator, change, reason, detail):
    message = agv.headerful("state", {"orderId": "", "orderUpdateId": 0, "lastNodeId": "", "lastNodeSequenceId": 0,
                                      "nodeStates": [], "edgeStates": [], "driving": False, "actionStates": [],
                                      "batteryState": {"batteryCharge": 50.0, "charging": False},
                                      "operatingMode": "AUTOMATIC", "errors": [],
                                      "safetyState": {"eStop": "NONE", "fieldViolation": False}})
    change(message)
    agv.publish_raw(agv.topic(STATE), json.dumps(message), qos=1)
    found = wait_until(lambda: rows(stack.database_url, "SELECT reason, detail FROM rejected_messages "
                                                        "WHERE clientid = %s", (agv.vehicle_id,)))
    assert len(found) == 1 and found[0]["reason"] == reason and found[0]["detail"].startswith(detail), found
    # nothing of it was applied, and the vehicle goes on
    assert vehicle_view(operator, agv.vehicle_id)["telemetry"]["battery_pct"] is None
    agv.state(batteryState={"batteryCharge": 51.0, "charging": False})
    wait_until(lambda: vehicle_view(operator, agv.vehicle_id)["telemetry"]["battery_pct"] == 51.0)


def test_factsheet_becomes_the_capability_sheet(agv, operator):
    factsheet = agv.send(topics.VdaSubtopic.FACTSHEET, {
        "typeSpecification": {"seriesName": "Tugger", "agvKinematic": "DIFF", "agvClass": "TUGGER",
                              "maxLoadMass": 500, "localizationTypes": ["NATURAL"], "navigationTypes": ["AUTONOMOUS"]},
        "physicalParameters": {"speedMin": 0.0, "speedMax": 2.5, "accelerationMax": 1.0, "decelerationMax": 1.0,
                               "heightMax": 1.5, "width": 0.8, "length": 1.6},
        "protocolLimits": {"maxStringLens": {}, "maxArrayLens": {}, "timing": {
            "minOrderInterval": 1.0, "minStateInterval": 0.5}},
        "protocolFeatures": {"optionalParameters": [], "agvActions": [
            {"actionType": "pick", "actionScopes": ["NODE"]}, {"actionType": "drop", "actionScopes": ["NODE"]}]},
        "agvGeometry": {}, "loadSpecification": {"loadSets": [{"setName": "EPAL", "loadType": "EPAL",
                                                               "maxWeight": 400.0}]}}, qos=1, retain=True)
    sheet = wait_until(lambda: operator.get(f"/api/v1/vehicles/{agv.vehicle_id}/capabilities").json()["current"])
    assert sheet["source"] == "vda5050_factsheet"
    assert sorted(sheet["task_types"]) == ["drop", "pick"]
    assert sheet["max_speed_mps"] == 2.5 and sheet["max_payload_kg"] == 400.0
    assert sheet["document"]["typeSpecification"] == factsheet["typeSpecification"]


def official_schema(name: str) -> dict:
    return vda5050.schema_documents()[name][0]


def test_a_mission_is_driven_as_an_order(agv, operator, stack):
    """The order follows the official schema; accepted when the state names it, in_progress, completed when the
    last node is reached and its action finished. Its headerIds increase."""
    waypoints = [{"lat": ORIGIN[0] + 0.0001, "lon": ORIGIN[1]}, {"lat": ORIGIN[0] + 0.0002, "lon": ORIGIN[1]}]
    created = operator.post("/api/v1/missions", json={"vehicle_id": agv.vehicle_id, "name": "to the dock",
                                                      "waypoints": waypoints, "tasks": [{"type": "drop"}]})
    assert created.status_code == 201, created.text
    mission_id = created.json()["id"]
    order = agv.wait_for_vda(topics.VdaSubtopic.ORDER)
    jsonschema.validate(order, official_schema("order"))
    assert order["manufacturer"] == "Acme" and order["serialNumber"] == agv.serial_number
    assert order["orderId"].startswith(mission_id) and order["orderUpdateId"] == 0
    assert [n["sequenceId"] for n in order["nodes"]] == [0, 2, 4]
    assert [e["sequenceId"] for e in order["edges"]] == [1, 3]
    assert order["nodes"][2]["nodePosition"]["y"] == pytest.approx(0.0002 * math.pi / 180 * vda5050.EARTH_RADIUS_M,
                                                                   abs=0.01)
    [drop] = order["nodes"][2]["actions"]
    assert drop["actionType"] == "drop" and drop["blockingType"] == "HARD"

    # QoS 0: the order comes again until a state names it, with the next headerId
    again = agv.wait_for_vda(topics.VdaSubtopic.ORDER, lambda m: m["headerId"] > order["headerId"])
    assert again["headerId"] == order["headerId"] + 1 and again["orderId"] == order["orderId"]

    nodes, edges = order["nodes"], order["edges"]
    node_state = [{"nodeId": n["nodeId"], "sequenceId": n["sequenceId"], "released": True} for n in nodes[1:]]
    edge_state = [{"edgeId": e["edgeId"], "sequenceId": e["sequenceId"], "released": True} for e in edges]
    waiting = [{"actionId": drop["actionId"], "actionType": "drop", "actionStatus": "WAITING"}]
    agv.state(orderId=order["orderId"], lastNodeId=nodes[0]["nodeId"], nodeStates=node_state, edgeStates=edge_state,
              actionStates=waiting)
    wait_until(lambda: operator.get(f"/api/v1/missions/{mission_id}").json()["state"] == "accepted")
    agv.state(orderId=order["orderId"], lastNodeId=nodes[1]["nodeId"], lastNodeSequenceId=2, driving=True,
              nodeStates=node_state[1:], edgeStates=edge_state[1:], actionStates=waiting)
    progressed = wait_until(lambda: (m := operator.get(f"/api/v1/missions/{mission_id}").json())["state"]
                            == "in_progress" and m)
    assert progressed["progress"]["percent"] == pytest.approx(66.7)
    assert progressed["progress"]["step"] == nodes[1]["nodeId"]
    agv.state(orderId=order["orderId"], lastNodeId=nodes[2]["nodeId"], lastNodeSequenceId=4,
              actionStates=[{**waiting[0], "actionStatus": "RUNNING"}])
    agv.state(orderId=order["orderId"], lastNodeId=nodes[2]["nodeId"], lastNodeSequenceId=4,
              actionStates=[{**waiting[0], "actionStatus": "FINISHED"}])
    done = wait_until(lambda: (m := operator.get(f"/api/v1/missions/{mission_id}").json())["state"]
                      == "completed" and m)
    assert done["accepted_at"] <= done["started_at"] <= done["finished_at"]
    assert rejected(stack.database_url, agv.vehicle_id) == []


def dispatched_order(agv, operator, tasks: list[dict] | None = None) -> tuple[str, dict]:
    waypoints = [{"lat": ORIGIN[0] + 0.0001, "lon": ORIGIN[1]}]
    created = operator.post("/api/v1/missions", json={"vehicle_id": agv.vehicle_id, "name": "short",
                                                      "waypoints": waypoints, "tasks": tasks or []})
    assert created.status_code == 201, created.text
    return created.json()["id"], agv.wait_for_vda(topics.VdaSubtopic.ORDER)


def mission_state(operator, mission_id: str, state: str) -> dict:
    return wait_until(lambda: (m := operator.get(f"/api/v1/missions/{mission_id}").json())["state"] == state and m,
                      message=lambda: f"mission never {state}: {operator.get(f'/api/v1/missions/{mission_id}').json()}")


def test_fatal_error_fails_the_mission(agv, operator):
    mission_id, order = dispatched_order(agv, operator)
    agv.state(orderId=order["orderId"], lastNodeId=order["nodes"][0]["nodeId"], driving=True)
    mission_state(operator, mission_id, "in_progress")
    agv.state(orderId=order["orderId"], lastNodeId=order["nodes"][0]["nodeId"], errors=[
        {"errorType": "laserScannerFault", "errorLevel": "FATAL", "errorDescription": "scanner dead",
         "errorReferences": []}])
    failed = mission_state(operator, mission_id, "failed")
    assert failed["failure_reason"] == "FATAL laserScannerFault: scanner dead"
    assert vehicle_view(operator, agv.vehicle_id)["health"]["health"] == "FATAL"


def test_failed_action_fails_the_mission(agv, operator):
    mission_id, order = dispatched_order(agv, operator, tasks=[{"type": "lift", "params": {"height": 1.2}}])
    [lift] = order["nodes"][-1]["actions"]
    assert lift["actionParameters"] == [{"key": "height", "value": 1.2}]
    agv.state(orderId=order["orderId"], lastNodeId=order["nodes"][-1]["nodeId"], lastNodeSequenceId=2,
              actionStates=[{"actionId": lift["actionId"], "actionType": "lift", "actionStatus": "FAILED",
                             "resultDescription": "stuck"}])
    assert mission_state(operator, mission_id, "failed")["failure_reason"] == "action lift failed: stuck"


def test_refused_order_rejects_the_mission(agv, operator):
    mission_id, order = dispatched_order(agv, operator)
    agv.state(errors=[{"errorType": "orderNoRoute", "errorLevel": "WARNING", "errorDescription": "no route",
                       "errorReferences": [{"referenceKey": "orderId", "referenceValue": order["orderId"]}]}])
    assert mission_state(operator, mission_id, "rejected")["failure_reason"] == "orderNoRoute: no route"


def test_pause_and_resume_are_start_and_stop_pause(agv, operator):
    mission_id, order = dispatched_order(agv, operator)
    agv.state(orderId=order["orderId"], lastNodeId=order["nodes"][0]["nodeId"], driving=True)
    mission_state(operator, mission_id, "in_progress")
    assert operator.post(f"/api/v1/missions/{mission_id}/pause", json={"reason": "aisle"}).status_code == 200
    pause = agv.wait_for_vda(topics.VdaSubtopic.INSTANT_ACTIONS,
                             lambda m: m["actions"][0]["actionType"] == "startPause")
    jsonschema.validate(pause, official_schema("instantActions"))
    assert len(pause["actions"]) == 1 and pause["instantActions"] == pause["actions"]
    assert mission_state(operator, mission_id, "paused")["pending_command"] == "pause"   # until the vehicle confirms
    agv.state(orderId=order["orderId"], lastNodeId=order["nodes"][0]["nodeId"], paused=True)
    wait_until(lambda: operator.get(f"/api/v1/missions/{mission_id}").json()["pending_command"] is None)
    assert operator.post(f"/api/v1/missions/{mission_id}/resume", json={}).status_code == 200
    resume = agv.wait_for_vda(topics.VdaSubtopic.INSTANT_ACTIONS,
                              lambda m: m["actions"][0]["actionType"] == "stopPause")
    assert resume["headerId"] > pause["headerId"]
    agv.state(orderId=order["orderId"], lastNodeId=order["nodes"][0]["nodeId"], paused=False, driving=True)
    wait_until(lambda: operator.get(f"/api/v1/missions/{mission_id}").json()["pending_command"] is None)
    assert operator.get(f"/api/v1/missions/{mission_id}").json()["state"] == "in_progress"


def test_revoked_vda_vehicle_is_refused(agv, operator):
    assert operator.post(f"/api/v1/vehicles/{agv.vehicle_id}/revoke", json={"reason": "stolen"}).status_code == 200
    wait_until(lambda: not agv.connected, message="the revoked vehicle was not disconnected")
    with pytest.raises(ConnectRefused):
        agv.connect_vda(agv.secret)
