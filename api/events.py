"""``GET /api/v1/events`` — the operator console's server-sent-event stream (``text/event-stream``).

The view authenticates like every route (401/403 JSON), then hands the stream to the event loop
(``api.asgi.stream_response``), so an open stream holds no request thread. What the stream carries — a snapshot
or, with ``Last-Event-ID``, what changed since; then vehicles, mission events and alarms of the caller's fleets as
they change — is api/live.py. A ``: keepalive`` comment goes out every ``API_EVENTS_KEEPALIVE_S`` seconds of
silence, and every ``API_EVENTS_RECHECK_S`` the stream checks that its login session is still good.
"""
from __future__ import annotations

from flask import request
from flask_smorest import Blueprint

from api import live
from api.asgi import stream_response
from api.auth import current_user, requires
from api.extensions import config
from fleetcore.errors import HttpError

blp = Blueprint("events", __name__, url_prefix="/api/v1",
                description="Live events for the operator console (server-sent events).")
MAX_EVENT_ID_DIGITS = 15


@blp.route("/events", methods=["GET"])
@blp.doc(
    parameters=[{"in": "header", "name": "Last-Event-ID", "required": False, "schema": {"type": "string"},
                 "description": "the id of the last event received: resume from there instead of a snapshot"}],
    responses={"200": {"description": "An endless server-sent-event stream: `snapshot` (or, resuming, what "
                                      "changed since `Last-Event-ID`), then `vehicles`, `mission` and `alarm` "
                                      "events of your fleets as they change, and `end` before the server closes it.",
                       "content": {"text/event-stream": {"schema": {"type": "string"}}}},
               "400": "BAD_REQUEST"})
@requires("viewer")
def events():
    """The console's event stream (server-sent events), open until the client closes it."""
    since_ms = _last_event_id()
    user = current_user()
    cfg = config()
    fleets = None if user.is_admin else user.fleets

    def chunks():
        return live.stream(cfg.database_url, fleets, since_ms, session_id=user.session_id, user_id=user.id,
                           keepalive_s=cfg.events_keepalive_s, recheck_s=cfg.events_recheck_s)

    # no-transform and X-Accel-Buffering: proxies must pass each event on at once, not buffer the stream
    return stream_response(chunks, "text/event-stream",
                           headers={"Cache-Control": "no-store, no-transform", "X-Accel-Buffering": "no"})


def _last_event_id() -> int | None:
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_EVENT_ID_DIGITS:
        raise HttpError(400, "Last-Event-ID must be the id of an event this stream sent (epoch milliseconds)",
                        details={"Last-Event-ID": raw[:40]})
    return int(raw)
