"""Prometheus metrics of authsvc (``GET /metrics``, no authentication, like the api's): how long the broker's
authentication and authorization callouts take, and how each decision came out, by reason.

* ``fleet_authsvc_callout_duration_seconds{callout="authn"|"authz"}`` — histogram, from the request body read to
  the answer (the database lookup included for authn);
* ``fleet_authsvc_decisions_total{callout, result="allow"|"deny"|"unavailable", reason}`` — counter; ``reason`` is
  the registry's or the ACL's (``device_secret``, ``token_used``, ``own_topic``, ``other_vehicle`` …), a bounded set.

The server runs several authsvc processes (one per core, authsvc/server.py) and a scrape reaches one of them, so
the figures are kept in prometheus_client's multiprocess mode: each process writes its own files in
``PROMETHEUS_MULTIPROC_DIR`` (authsvc/server.py points it at a fresh directory) and ``/metrics`` adds them up. A
process that ended (granian respawns a failed worker) still counts: its counters stay in the sum, as they must.
Without that variable (one process, e.g. a test app) the process's own registry is served.
"""
from __future__ import annotations

import os

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

# A CONNECT is one short query (~1 ms); an authz decision is pure CPU (~0.2 ms). The tail is what matters: EMQX
# gives up on a callout after 5 s.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

CALLOUT_SECONDS = Histogram("fleet_authsvc_callout_duration_seconds",
                            "Time to answer a broker callout (authn: CONNECT; authz: publish/subscribe).",
                            ["callout"], buckets=BUCKETS)
DECISIONS = Counter("fleet_authsvc_decisions", "Broker callout decisions by result and reason.",
                    ["callout", "result", "reason"])

blp = Blueprint("metrics", __name__)


def decided(callout: str, allow: bool, reason: str) -> None:
    DECISIONS.labels(callout, "allow" if allow else "deny", reason).inc()


def unavailable(callout: str, reason: str) -> None:
    DECISIONS.labels(callout, "unavailable", reason).inc()


@blp.route("/metrics", methods=["GET"])
def metrics():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest()
    return Response(body, content_type=CONTENT_TYPE_LATEST)
