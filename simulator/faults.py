"""Fault injection: what a misbehaving or hostile vehicle does, on demand, so the backend's defences can be seen.

Every option is off by default. Rates are probabilities per telemetry tick (0..1), decided by the vehicle's own
seeded random generator, so a run with ``--seed`` is repeatable.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

# Kinds of malformed payload, sent in turn, and the rejected_messages.reason each must produce (listed in
# sql/code/10_ingest_common.sql). Other faults: spoof on another vehicle's topic → acl_denied; a foreign vehicle_id
# in the payload → vehicle_id_mismatch. Duplicates and out-of-order messages are not rejections (stored once / stored
# without moving the latest state backwards); clock skew is flagged (clock_skewed), or ts_out_of_range beyond a day.
EXPECTED_REASON = {"not_json": "not_json", "not_object": "not_object", "missing_field": "missing_field",
                   "wrong_type": "wrong_type", "bad_version": "unsupported_version"}
MALFORMED_KINDS = tuple(EXPECTED_REASON)


@dataclass
class FaultConfig:
    drop_every_s: float = 0.0          # abruptly close the TCP connection this often (LWT, reconnect, batch upload)
    malformed_rate: float = 0.0        # send a malformed telemetry payload instead of a good one
    clock_skew_s: float = 0.0          # the device clock is off by this much (ts in every message)
    spoof_rate: float = 0.0            # publish telemetry as another vehicle (its topic / a foreign vehicle_id)
    duplicate_rate: float = 0.0        # send a telemetry message twice (same msg_id)
    out_of_order_rate: float = 0.0     # hold a telemetry message back and send it after the next one
    reject_missions: bool = False      # reject every mission (reason "fault_injected")
    fail_missions_at: float = 0.0      # fail every mission when it reaches this percent (0 = never)

    def __post_init__(self) -> None:
        for name in ("malformed_rate", "spoof_rate", "duplicate_rate", "out_of_order_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.drop_every_s < 0:
            raise ValueError("drop_every_s must not be negative")
        if not 0.0 <= self.fail_missions_at < 100.0:
            raise ValueError("fail_missions_at must be in [0, 100)")

    @property
    def active(self) -> list[str]:
        """Names of the faults that are switched on (for the start-up log)."""
        return [f.name for f in fields(self) if getattr(self, f.name)]


def malformed_payload(kind: str, good: dict[str, Any]) -> bytes:
    """A telemetry payload that is wrong in one specific way, derived from a good envelope."""
    if kind == "not_json":
        return json.dumps(good).encode()[:-7] + b"{oops"  # truncated: valid UTF-8, invalid JSON
    if kind == "not_object":
        return b'["v", 1, "not an object"]'
    broken = json.loads(json.dumps(good))
    if kind == "missing_field":
        broken["data"].pop("lat", None)
    elif kind == "wrong_type":
        broken["data"]["lat"] = "forty-eight north"
    elif kind == "bad_version":
        broken["v"] = 99
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return json.dumps(broken, separators=(",", ":")).encode()
