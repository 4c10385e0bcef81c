"""The vehicle HTTP fallback (``/api/v1/vehicle/…``), for vehicles on networks that block MQTT
(docs/PROTOCOL.md → HTTP fallback).

A vehicle gets a short-lived token for its id and device secret (api/vehicle_auth.py) and then, as itself only:

* ``POST /telemetry`` (one envelope or ``{"v": 1, "batch": [...]}``), ``POST /status``, ``POST /mission`` — the body
  is handed, byte for byte, to the same ingest inbox view the broker's rule action inserts into, with the topic
  ``fleet/v1/{vid}/{kind}`` built from the token's vehicle id and that id as the client id. Validation,
  deduplication, dead-lettering and parking are the SQL's (sql/code/2x_*.sql), exactly as over MQTT; nothing is
  checked twice in Python. The answer is always 202 (the message was handed over, as a PUBACK says over MQTT) and
  says what the ingest dead-lettered or parked, read back in the same transaction;
* ``GET /config`` — its desired configuration;
* ``GET /commands?wait=25`` — its pending commands, in order, waiting up to ``wait`` seconds for one (a long-poll
  that holds no request thread: api/vehicle_commands.py); ``POST /commands/{msg_id}/ack`` acknowledges one.

The body limit is the api's (``API_MAX_REQUEST_BYTES``, 1 MiB, like the broker's MQTT packet limit): a larger body is
a 413 before it is read whole; between the ingest's own limit (256 KiB) and that, it is dead-lettered `oversize`,
as over MQTT.
"""
from __future__ import annotations

import base64
import logging
import time

from flask import request
from flask_smorest import Blueprint

from api import vehicle_auth, vehicle_commands
from api.asgi import stream_response
from api.extensions import config, database
from api.queries import vehicle_gateway as sql
from api.schemas import (
    CommandAckSchema,
    CommandsQuerySchema,
    IngestResultSchema,
    VehicleDesiredConfigSchema,
    VehicleTokenRequestSchema,
    VehicleTokenSchema,
)
from fleetcore import topics
from fleetcore.errors import HttpError
from fleetcore.logs import log_event

blp = Blueprint("vehicle", __name__, url_prefix="/api/v1/vehicle",
                description="The vehicle HTTP fallback: for vehicles whose network blocks MQTT (vehicle tokens "
                            "only; see docs/PROTOCOL.md, HTTP fallback).")
log = logging.getLogger("api.vehicle_gateway")

_ENVELOPE_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "description": "the message exactly as it would be published over MQTT: an envelope "
                                     "{v, msg_id, seq, ts, data} (docs/PROTOCOL.md, docs/schemas/)"}}}}


@blp.route("/token", methods=["POST"])
@blp.arguments(VehicleTokenRequestSchema)
@blp.response(200, VehicleTokenSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
@blp.alt_response(429, response="TOO_MANY_REQUESTS")
def token(body: dict):
    """Exchange the vehicle id and device secret for a vehicle token (audience `fleet-vehicle`, role `vehicle`).

    Valid `API_VEHICLE_TOKEN_TTL_S` seconds (15 minutes); get a new one when it expires. Refused (401) for a wrong
    secret, an enrollment token, a pending, revoked or decommissioned vehicle; repeated failures from one address are
    refused with 429 for a while. Operator tokens are not accepted on the vehicle routes, nor vehicle tokens on the
    operators'."""
    return vehicle_auth.exchange_secret(body["vehicle_id"], body["secret"])


def _ingest(kind: topics.Kind):
    received_at_ms = int(time.time() * 1000)   # the broker's receive time, as its rule action passes it
    payload_b64 = base64.b64encode(request.get_data(cache=False)).decode("ascii")
    with database().transaction() as cur:
        vehicle = vehicle_auth.vehicle_in(cur)
        outcome = sql.insert_into_inbox(cur, kind.value, vehicle.id, topics.vehicle_topic(vehicle.id, kind),
                                        payload_b64, received_at_ms)
    if outcome["rejected"]:
        log_event(log, "vehicle_http.rejected", logging.INFO, vehicle=vehicle.id, kind=kind.value,
                  reasons=",".join(r["reason"] for r in outcome["rejected"]))
    return outcome, 202


@blp.route("/telemetry", methods=["POST"])
@vehicle_auth.requires_vehicle
@blp.doc(requestBody=_ENVELOPE_BODY)
@blp.response(202, IngestResultSchema)
@blp.alt_response(413, response="REQUEST_ENTITY_TOO_LARGE")
def post_telemetry():
    """Telemetry: one envelope, or `{"v": 1, "batch": [envelope, …]}` from the offline buffer — as published on
    `fleet/v1/{vid}/telemetry`. Each item is validated, deduplicated (`msg_id`) and stored on its own; what is bad is
    dead-lettered and listed in `rejected`."""
    return _ingest(topics.Kind.TELEMETRY)


@blp.route("/status", methods=["POST"])
@vehicle_auth.requires_vehicle
@blp.doc(requestBody=_ENVELOPE_BODY)
@blp.response(202, IngestResultSchema)
@blp.alt_response(413, response="REQUEST_ENTITY_TOO_LARGE")
def post_status():
    """A status report, as published on `fleet/v1/{vid}/status`."""
    return _ingest(topics.Kind.STATUS)


@blp.route("/mission", methods=["POST"])
@vehicle_auth.requires_vehicle
@blp.doc(requestBody=_ENVELOPE_BODY)
@blp.response(202, IngestResultSchema)
@blp.alt_response(413, response="REQUEST_ENTITY_TOO_LARGE")
def post_mission_event():
    """A mission event (accepted, progress, completed …), as published on `fleet/v1/{vid}/mission`."""
    return _ingest(topics.Kind.MISSION)


@blp.route("/config", methods=["GET"])
@vehicle_auth.requires_vehicle
@blp.response(200, VehicleDesiredConfigSchema)
def get_config():
    """The vehicle's desired configuration and its version (what `config.update` carries); report the version you
    applied in your next status (`config_version`, `config`)."""
    with database().transaction() as cur:
        vehicle = vehicle_auth.vehicle_in(cur)
        return sql.desired_config(cur, vehicle.id)


@blp.route("/commands", methods=["GET"])
@vehicle_auth.requires_vehicle
@blp.arguments(CommandsQuerySchema, location="query")
@blp.doc(responses={"200": {"description": "`{\"commands\": [command, …]}`: the commands not yet acknowledged, oldest "
                                          "first (at most 100), each the envelope exactly as published on "
                                          "`fleet/v1/{vid}/cmd` (docs/schemas/command.schema.json); empty when none "
                                          "came within `wait` seconds.",
                            "content": {"application/json": {"schema": {"type": "object", "properties": {
                                "commands": {"type": "array", "items": {"type": "object"}}}}}}}})
def get_commands(args: dict):
    """Long-poll for commands: answers at once when some are pending, else waits up to `wait` seconds (0–30) for
    the next one. A command stays pending until acknowledged — `POST /commands/{msg_id}/ack`, or the confirmation
    the protocol asks for anyway (the mission event or status that answers it), over either channel — and is handed
    out for at most 2 hours. Handle each `msg_id` once: the same command may also arrive over MQTT."""
    with database().transaction() as cur:
        vehicle = vehicle_auth.vehicle_in(cur)
        sql.record_poll(cur, vehicle.id)
    database_url, wait_s = config().database_url, float(args["wait"])

    async def chunks():
        pending = await vehicle_commands.waits(database_url).poll(vehicle.id, wait_s)
        yield ('{"commands":' + pending + "}").encode()

    return stream_response(chunks, "application/json", headers={"Cache-Control": "no-store"})


@blp.route("/commands/<string(maxlength=64):msg_id>/ack", methods=["POST"])
@vehicle_auth.requires_vehicle
@blp.response(200, CommandAckSchema)
@blp.alt_response(404, response="NOT_FOUND")
def ack_command(msg_id: str):
    """Acknowledge a command: it is not handed out again. Once per command whichever way it comes (this call, or
    the mission event or status that confirms it, over MQTT or HTTP): a repeated acknowledgement changes nothing
    and says when and how the first one came (`acked_now: false`). Acknowledging is not confirming: a stop is
    confirmed by your status `estop: true`, a mission command by your mission event, as over MQTT."""
    with database().transaction() as cur:
        vehicle = vehicle_auth.vehicle_in(cur)
        row = sql.ack_command(cur, vehicle.id, msg_id)
    if row is None:
        raise HttpError(404, f"no command {msg_id} for this vehicle")
    if row["acked_now"]:
        log_event(log, "command.acked", vehicle=vehicle.id, msg_id=msg_id, via="http")
    return row
