"""Mission states, defined once for every Python component (api, dispatcher, simulator scenarios).

The lifecycle itself — which event moves a mission from which state to which — is the ``mission_transitions``
table in sql/ (docs/PROTOCOL.md, Mission lifecycle). The states and whether each one is terminal are the
``mission_states`` table; tests/test_mission_states.py checks that this module says the same.

``queued`` waits for the vehicle; the ``ACTIVE`` states are with the vehicle (it has one at a time); a
``TERMINAL`` state never changes again once committed (the retry policy re-queues a mission in the same
transaction as its outcome). ``RETRYABLE`` are the outcomes a mission's retry policy may name.
"""
from __future__ import annotations

QUEUED = "queued"
DISPATCHED = "dispatched"
ACCEPTED = "accepted"
IN_PROGRESS = "in_progress"
CANCEL_REQUESTED = "cancel_requested"
PAUSED = "paused"
COMPLETED = "completed"
FAILED = "failed"
REJECTED = "rejected"
CANCELLED = "cancelled"
TIMED_OUT = "timed_out"
EXPIRED = "expired"

ACTIVE: tuple[str, ...] = (DISPATCHED, ACCEPTED, IN_PROGRESS, CANCEL_REQUESTED, PAUSED)
OPEN: tuple[str, ...] = (QUEUED, *ACTIVE)   # not terminal
TERMINAL: tuple[str, ...] = (COMPLETED, FAILED, REJECTED, CANCELLED, TIMED_OUT, EXPIRED)
STATES: tuple[str, ...] = (*OPEN, *TERMINAL)  # in lifecycle order
RETRYABLE: tuple[str, ...] = (FAILED, TIMED_OUT, REJECTED)
