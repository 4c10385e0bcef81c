"""``GET /api/v1/events`` — the operator console's server-sent-event stream (``text/event-stream``).

For now it carries a ``: keepalive`` comment at once and then every ``API_EVENTS_KEEPALIVE_S`` seconds: the seam
the console's live updates will fill. The view authenticates like every route (401/403 JSON) and hands the
stream over to the event loop (``api.asgi.stream_response``), so an open stream holds no request thread.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from flask_smorest import Blueprint

from api.asgi import stream_response
from api.auth import requires
from api.extensions import config

blp = Blueprint("events", __name__, url_prefix="/api/v1",
                description="Live events for the operator console (server-sent events).")
KEEPALIVE = b": keepalive\n\n"


@blp.route("/events", methods=["GET"])
@blp.doc(responses={"200": {"description": "An endless server-sent-event stream; for now only `: keepalive` "
                                           "comments.",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
@requires("viewer")
def events():
    """The console's event stream (server-sent events), open until the client closes it."""
    interval = config().events_keepalive_s

    async def keepalives() -> AsyncGenerator[bytes, None]:
        while True:
            yield KEEPALIVE
            await asyncio.sleep(interval)

    # no-transform and X-Accel-Buffering: proxies must pass each event on at once, not buffer the stream
    return stream_response(keepalives, "text/event-stream",
                           headers={"Cache-Control": "no-store, no-transform", "X-Accel-Buffering": "no"})
