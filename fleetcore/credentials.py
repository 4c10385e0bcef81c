"""Device secrets and enrollment tokens: generation and keyed hashing.

Both are high-entropy random strings (256 bits), so a fast keyed hash (HMAC-SHA-256 with a server key) is as
safe as bcrypt against offline guessing and costs microseconds instead of ~100 ms: a reconnect storm of
thousands of vehicles stays cheap (docs/ARCHITECTURE.md, Identity). Only the hash is stored; comparison is
constant-time.
Operator passwords are different (low entropy) and use bcrypt, in the api.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_BYTES = 32  # 256 bits


def new_device_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def new_enrollment_token() -> str:
    return "enr_" + secrets.token_urlsafe(SECRET_BYTES)


def keyed_hash(key: str, value: str) -> bytes:
    return hmac.new(key.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).digest()


def matches(key: str, value: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(keyed_hash(key, value), bytes(stored_hash))


def derive_device_secret(key: str, vehicle_id: str, request_msg_id: str, enrollment_token: str) -> str:
    """The device secret a registration request earns: 256 bits, a keyed PRF of the request.

    Deterministic on purpose: when the broker retries a registration request (same ``msg_id``) whose answer could
    not be published, authsvc re-sends the *same* secret without ever storing it in plain text. Without the
    server key the output is indistinguishable from random (the enrollment token alone carries 256 bits).
    The fixed prefix with separators that no secret, token or id contains keeps it apart from ``keyed_hash``.
    """
    message = "\x00".join(("fleet/device-secret/v1", vehicle_id, request_msg_id, enrollment_token))
    digest = hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
