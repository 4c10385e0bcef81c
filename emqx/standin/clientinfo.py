"""Data passed between the MQTT server and the EMQX-compatible parts (authn, authz, rule engine).

The field names follow EMQX's client info / message columns so that templates (``${clientid}``) and rule SQL
(``SELECT clientid, publish_received_at …``) can read them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ClientInfo:
    """One MQTT connection as EMQX's authn/authz/rule engine see it."""

    clientid: str
    username: str | None
    password: bytes | None
    peerhost: str
    peerport: int
    listener: str = "tcp:default"
    proto_name: str = "MQTT"
    proto_ver: int = 4
    keepalive: int = 60
    clean_start: bool = True
    connected_at: int = 0  # ms since epoch, set after successful authentication
    client_attrs: dict[str, str] = field(default_factory=dict)  # from the authn answer
    is_superuser: bool = False  # from the authn answer; a superuser skips authorization (EMQX)
    acl: list[dict] = field(default_factory=list)  # rules from the authn answer (EMQX 5.8+ `client_info` source)
    peercert: PeerCert | None = None  # the client certificate the TLS listener verified (mTLS), else None


@dataclass(frozen=True)
class PeerCert:
    """A verified client certificate, as emqx_channel:set_peercert_infos/3 and maybe_add_cert/2 keep it: the CN
    (``cn`` → ``${cert_common_name}``), the subject (``dn`` → ``${cert_subject}``) and the DER bytes
    (``cert_pem`` → ``${cert_pem}``, rendered as base64)."""

    common_name: str
    subject: str
    der: bytes


@dataclass
class Message:
    """One accepted PUBLISH (from a client, or from the REST publish API with clientid ``http_api``)."""

    id: str  # hex message id
    clientid: str
    username: str | None
    topic: str
    payload: bytes
    qos: int
    retain: bool
    publish_received_at: int  # ms since epoch
    peerhost: str
    client_attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class AuthnResult:
    """The answer of the authentication chain (authn.Authenticator) for one CONNECT."""

    allow: bool
    reason: str                      # "success" | "not_authorized" | "bad_username_or_password"
    client_attrs: dict[str, str] = field(default_factory=dict)
    is_superuser: bool = False
    expire_at: int | None = None     # seconds since epoch, when the answer set one
    acl: list[dict] = field(default_factory=list)   # authorization rules attached to the session (5.8+)
