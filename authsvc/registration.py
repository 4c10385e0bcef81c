"""``POST /mqtt/register`` — vehicle registration over MQTT, called by the broker's ``http:registration`` action.

The broker forwards every ``fleet/v1/{vid}/register/request`` as the rule output
``{clientid, username, topic, payload_b64, publish_received_at}``. authsvc validates the request, turns the
enrollment token into a device secret (``fleetcore.registry.register``: atomic, one secret per token) and
publishes the answer (QoS 1) to ``fleet/v1/{username}/register/response`` through the broker's publish API:
``register.accepted`` with ``username``/``password``, or ``register.rejected`` with a reason (docs/PROTOCOL.md,
Registration). A request with a CSR (``data.csr``) is answered instead with a certificate signed by the fleet CA and
the CA chain, and no password (fleetcore/certificates.py; docs/PROTOCOL.md, Certificate identity); a CSR that cannot
be signed is ``register.rejected`` with reason ``csr_invalid`` and what is wrong with it. The answer always goes to
the verified identity (``username``, bound to the client id by authn), never to anything named in the payload.

HTTP answer: ``200`` once handled — accepted or rejected, and the answer published (``delivered`` false when the
vehicle had not subscribed: the broker dropped it, and the vehicle may repeat the same request). EMQX's HTTP action
retries only ``429``, ``503`` and connection failures and drops the request on any other status (docs/EMQX.md
§5.6a, §9 pitfall 17), so every failure that a retry can cure is a ``503``:

* database unavailable → ``503`` before anything changed;
* the answer could not be published — the broker API unreachable, or answering with an error — → ``503``,
  *after* the database commit. The secret then exists only as its hash, but it is derived from the request, so
  the retry of the same request (same ``msg_id``) is recognised as a replay and re-publishes the identical answer
  with the identical secret, within the replay window (``AUTHSVC_REGISTRATION_REPLAY_WINDOW_S``, 10 min). A
  different request with the used token gets ``token_used``. If every retry fails (``resource_opts.request_ttl``
  in emqx.conf), the vehicle never learns the secret and an operator issues a new enrollment token
  (``POST /api/v1/vehicles/{id}/enrollment``), which rotates it.

Not retried, because the same call would fail the same way: ``400``/``413`` for a call that is not a rule output
(a broker misconfiguration, or a request too large to be one), ``401`` without the broker token, ``500`` for a bug.
The broker drops the request and counts it in the action's ``failed`` metric; authsvc logs each at error level
(``registration.bad_call``, ``authsvc.unhandled_error``) except the token refusal, which anyone can provoke.

The enrolling client connects as ``_enroll-{vid}`` (username ``{vid}``), never as the vehicle, so it neither
resumed nor took over the vehicle's session. When its registration rotates the secret, the vehicle's live session
(the old secret's) is kicked — which in EMQX also discards it with its queue (``DELETE /api/v5/clients/{id}``) —
before the answer is published; the old secret stops working in the registration transaction itself.

Each rejected request is audited, at most ``AUTHSVC_REGISTRATION_REJECTIONS_PER_MINUTE`` (10) per vehicle a minute:
past that the enrolling client gets no answer and is disconnected (``_disconnect_flooding``).
"""
from __future__ import annotations

import base64
import binascii
import datetime
import json
import logging
import uuid
from typing import TypeGuard

import psycopg2
from flask import Blueprint, jsonify

from authsvc.broker_request import MalformedRequest, json_object, read_body, require_broker_token
from authsvc.extensions import broker, config, database, fleet_ca
from fleetcore import capabilities, certificates, envelope, registry, topics
from fleetcore.emqx_api import EmqxApiError
from fleetcore.errors import HttpError, log_unavailable
from fleetcore.logs import log_event

blp = Blueprint("registration", __name__)
blp.before_request(require_broker_token)
log = logging.getLogger("authsvc.registration")

MAX_REQUEST_BYTES = 256 * 1024     # the rule output with a base64 payload; a registration request is < 1 KB
_ANSWER_NAMESPACE = uuid.UUID("5b0e3c52-8d9a-4f27-9d0e-6c1f4a7e2b10")


class _Malformed(Exception):
    def __init__(self, message: str, request_msg_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_msg_id = request_msg_id


def _text(value: object) -> TypeGuard[str]:
    """A string PostgreSQL can store (text cannot hold NUL)."""
    return isinstance(value, str) and "\x00" not in value


def _request_envelope(payload_b64: str) -> dict:
    """The registration request inside the rule output: ``{"v":1,"msg_id","ts","data":{"enrollment_token",…}}``."""
    try:
        raw = base64.b64decode(payload_b64, validate=True)
        message = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _Malformed("the payload is not JSON") from None
    if not isinstance(message, dict):
        raise _Malformed("the payload is not a JSON object")
    msg_id = message.get("msg_id")
    msg_id = msg_id if _text(msg_id) and 1 <= len(msg_id) <= 64 else None
    if msg_id is None:
        raise _Malformed("msg_id must be a string of 1–64 characters")
    if message.get("v") != envelope.VERSION:
        raise _Malformed(f"unsupported envelope version {message.get('v')!r}; expected 1", msg_id)
    data = message.get("data")
    if not isinstance(data, dict):
        raise _Malformed("data must be an object", msg_id)
    token = data.get("enrollment_token")
    if not _text(token) or not 1 <= len(token) <= 200:
        raise _Malformed("data.enrollment_token is required", msg_id)
    for name in ("model", "sw_version"):
        value = data.get(name)
        if value is not None and (not _text(value) or len(value) > 200):
            raise _Malformed(f"data.{name} must be a string of at most 200 characters", msg_id)
    sheet = None
    if data.get("capabilities") is not None:
        try:
            sheet = capabilities.parse(data["capabilities"])
        except capabilities.InvalidSheet as exc:
            raise _Malformed(f"data.{exc}", msg_id) from None
    return {"msg_id": msg_id, "token": token, "model": data.get("model"), "sw_version": data.get("sw_version"),
            "sheet": sheet, "csr": data.get("csr")}


def _answer(outcome: registry.RegistrationOutcome, request_msg_id: str | None,
            ca_chain: list[str] | None = None) -> dict:
    """The register.accepted / register.rejected envelope. Its msg_id is derived from the request, so a re-sent
    answer carries the same msg_id and the vehicle can recognise it as a repeat. With a certificate, ``ca_chain`` is
    the fleet CA's certificate: what the vehicle's certificate chains to."""
    if outcome.accepted and outcome.certificate_pem is not None:
        not_after = outcome.certificate_not_after
        answer = envelope.reply("register.accepted", {
            "request_msg_id": request_msg_id, "vehicle_id": outcome.vehicle_id, "fleet_id": outcome.fleet_id,
            "username": outcome.vehicle_id, "certificate": outcome.certificate_pem,
            "ca_chain": ca_chain or [],
            "not_after": not_after.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if not_after else None})
    elif outcome.accepted:
        answer = envelope.reply("register.accepted", {
            "request_msg_id": request_msg_id, "vehicle_id": outcome.vehicle_id, "fleet_id": outcome.fleet_id,
            "username": outcome.vehicle_id, "password": outcome.secret})
    else:
        answer = envelope.reply("register.rejected", {
            "request_msg_id": request_msg_id, "reason": outcome.reason, "message": outcome.message})
    if request_msg_id is not None:
        answer["msg_id"] = str(uuid.uuid5(_ANSWER_NAMESPACE, f"{outcome.vehicle_id}\x00{request_msg_id}\x00"
                                                             f"{answer['type']}"))
    return answer


def _decide(body: dict, vehicle_id: str) -> tuple[registry.RegistrationOutcome, str | None]:
    parsed = topics.parse(body["topic"])
    if parsed is None or parsed.kind is not topics.Kind.REGISTER_REQUEST or parsed.vehicle_id != vehicle_id:
        return registry.rejected(vehicle_id, "malformed", "the request must come from the vehicle's own "
                                                          "register/request topic"), None
    try:
        request = _request_envelope(body["payload_b64"])
    except _Malformed as exc:
        return registry.rejected(vehicle_id, "malformed", exc.message), exc.request_msg_id
    cfg = config()
    issue = None
    if request["csr"] is not None:
        ca = fleet_ca()
        if ca is None:
            return registry.rejected(vehicle_id, "certificates_unavailable"), request["msg_id"]
        try:
            csr = certificates.parse_csr(request["csr"], vehicle_id)
        except certificates.InvalidCsr as exc:
            return registry.rejected(vehicle_id, "csr_invalid", exc.message), request["msg_id"]
        validity = datetime.timedelta(days=cfg.certificate_validity_days)

        def issue() -> certificates.IssuedCertificate:   # signed only once the token has been accepted
            return ca.issue(csr, vehicle_id, validity)
    with database().transaction() as cur:
        outcome = registry.register(cur, cfg.device_secret_key, vehicle_id=vehicle_id,
                                    enrollment_token=request["token"], request_msg_id=request["msg_id"],
                                    model=request["model"], sw_version=request["sw_version"],
                                    sheet=request["sheet"], replay_window_s=cfg.replay_window_s,
                                    issue_certificate=issue)
    return outcome, request["msg_id"]


def _audit_rejection(outcome: registry.RegistrationOutcome, request_msg_id: str | None) -> bool:
    """Audit a rejected registration — or, when this vehicle already has ``AUTHSVC_REGISTRATION_REJECTIONS_PER_MINUTE``
    audited rejections in the last minute, write nothing and return False: the client is repeating a request that
    keeps failing (an enrolling client sent 1,500 in 4.6 s, each an audit row kept for good), and is disconnected
    instead. The per-vehicle lock makes parallel calls count one by one."""
    cap = config().rejections_per_minute
    with database().transaction() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('vehicle.register_rejected'), hashtext(%s))",
                    (outcome.vehicle_id,))
        cur.execute("SELECT count(*) AS n FROM (SELECT FROM audit_log WHERE target_type = 'vehicle' "
                    "AND target_id = %s AND action = 'vehicle.register_rejected' AND at > now() - interval '1 minute' "
                    "LIMIT %s) AS recent", (outcome.vehicle_id, cap))
        if cur.fetchone()["n"] >= cap:
            return False
        cur.execute("INSERT INTO audit_log (actor_type, actor_id, action, target_type, target_id, detail) "
                    "VALUES ('vehicle', %s, 'vehicle.register_rejected', 'vehicle', %s, %s)",
                    (outcome.vehicle_id, outcome.vehicle_id,
                     {"reason": outcome.reason, "request_msg_id": request_msg_id}))
    return True


def _disconnect_flooding(clientid: str, vehicle_id: str) -> dict:
    """Past its rejections per minute: disconnect the enrolling client, unanswered (the broker's flapping detection
    bans it if it keeps reconnecting). 200, so the broker does not retry."""
    try:
        kicked = broker().kick(clientid)
    except EmqxApiError as exc:
        kicked = False
        log_event(log, "registration.kick_failed", logging.ERROR, vehicle=vehicle_id, broker_status=exc.status)
    log_event(log, "registration.flood_disconnected", logging.WARNING, vehicle=vehicle_id, clientid=clientid,
              kicked=kicked)
    return {"result": "rejected", "reason": "too_many_rejections", "vehicle_id": vehicle_id, "delivered": False,
            "disconnected": kicked}


@blp.route("/mqtt/register", methods=["POST"])
def register():
    """Handle one registration request and publish the answer to the vehicle."""
    try:
        body = json_object(read_body(MAX_REQUEST_BYTES))
    except MalformedRequest as exc:
        log_event(log, "registration.bad_call", logging.ERROR, reason=exc.reason)
        raise HttpError(413 if exc.reason == "oversized" else 400,
                           f"expected the rule output as a JSON object ({exc.reason})") from None
    clientid, vehicle_id = body.get("clientid"), body.get("username")
    if not isinstance(clientid, str) or not isinstance(vehicle_id, str) \
            or not topics.is_enrollment_client_of(clientid, vehicle_id) or not isinstance(body.get("topic"), str) \
            or not isinstance(body.get("payload_b64"), str):
        # authn admits token holders only as clientid = _enroll-{username}: anything else is not a rule output
        log_event(log, "registration.bad_call", logging.ERROR, reason="missing_fields")
        raise HttpError(400, "expected {clientid, username, topic, payload_b64, publish_received_at} with a "
                                "vehicle id as username and its enrollment client id as clientid")
    try:
        outcome, request_msg_id = _decide(body, vehicle_id)
        if not outcome.accepted and not _audit_rejection(outcome, request_msg_id):
            return jsonify(_disconnect_flooding(clientid, vehicle_id))
    except psycopg2.Error as exc:
        log_unavailable("authsvc", "database", exc, vehicle=vehicle_id)
        raise HttpError(503, "the registry is unavailable; retry", code="unavailable") from None
    if outcome.rotated:
        # The old secret stopped working at the commit; its live session (and whatever it queued) goes now,
        # *before* the answer is published, so the kick can never hit the new secret's first connection. The
        # next vehicle session starts empty: nothing queued for the old credential reaches the new one.
        kicked = registry.disconnect(broker(), vehicle_id)
        log_event(log, "registration.old_session_ended", vehicle=vehicle_id, result=kicked)

    result = "accepted" if outcome.accepted else "rejected"
    summary = {"result": result, "reason": outcome.reason, "vehicle_id": vehicle_id, "request_msg_id": request_msg_id,
               "replayed": outcome.replayed, "rotated": outcome.rotated}
    try:
        published = broker().publish(topics.vehicle_topic(vehicle_id, topics.Kind.REGISTER_RESPONSE),
                                     _answer(outcome, request_msg_id, ca.chain_pem if (ca := fleet_ca()) else None),
                                     qos=1)
    except EmqxApiError as exc:
        # 503 whether the broker was unreachable or refused the publish: only a retry of this very request can
        # still bring the vehicle its answer (a 502 would make EMQX drop it).
        log_event(log, "registration.answer_failed", logging.ERROR, vehicle=vehicle_id, result=result,
                  reason=outcome.reason, request_msg_id=request_msg_id, broker_status=exc.status,
                  error=str(exc)[:200])
        raise HttpError(503, f"registration {result}, but the answer could not be published; retry the same "
                             "request to re-send it", code="answer_not_published", details=summary) from None
    log_event(log, f"registration.{result}", logging.INFO if outcome.accepted else logging.WARNING,
              vehicle=vehicle_id, reason=outcome.reason, request_msg_id=request_msg_id, replayed=outcome.replayed,
              rotated=outcome.rotated, delivered=published.delivered)
    if not published.delivered:
        log_event(log, "registration.answer_not_delivered", logging.WARNING, vehicle=vehicle_id,
                  hint="the vehicle must subscribe to its register/response topic before sending the request")
    return jsonify({**summary, "delivered": published.delivered})
