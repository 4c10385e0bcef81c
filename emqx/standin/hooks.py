"""What the MQTT server calls of authentication, authorization and the rule engine, as ``typing.Protocol``s.

EMQX runs these as hooks of its broker (``client.authenticate``, ``client.authorize``, ``message.publish``,
``client.connected``…). Here the broker (broker.py, connection.py) and the REST API (rest_api.py) likewise see
them only through these protocols and import none of their implementations — ``authn.Authenticator``,
``authz.Authorizer``, ``rules.RuleEngine`` — which app.py creates and hands over.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .clientinfo import AuthnResult, ClientInfo, Message


class AuthnHooks(Protocol):
    """The authentication chain (``authn.Authenticator``)."""

    async def authenticate(self, client: ClientInfo) -> AuthnResult:
        """Allow or refuse a CONNECT; never raises for a backend that is down (that is a refusal)."""
        ...


class AuthzHooks(Protocol):
    """Authorization with its per-client cache (``authz.Authorizer``)."""

    @property
    def metrics(self) -> Mapping[str, int]: ...

    async def authorize(self, client: ClientInfo, action: str, topic: str, qos: int = 0,
                        retain: bool = False) -> bool:
        """Whether ``client`` may ``action`` ("publish" | "subscribe") ``topic``."""
        ...

    def forget(self, clientid: str) -> None:
        """The client's connection ended: drop what was cached for it."""
        ...

    def cached(self, clientid: str) -> list[dict[str, Any]]: ...

    def clear_cache(self, clientid: str | None = None) -> None: ...


class RuleHooks(Protocol):
    """The rule engine (``rules.RuleEngine``) as the broker and the REST API use it."""

    def rules_for_topic(self, topic: str) -> Sequence[object]:
        """The rules selecting messages on ``topic``."""
        ...

    def publish(self, msg: Message) -> Sequence[object]:
        """Evaluate the rules selecting ``msg`` and queue their outputs on the actions; returns without waiting
        for the actions (EMQX's ``message.publish`` hook), never raises for an action."""
        ...

    def client_connected(self, client: ClientInfo, *, sockname: str, expiry_interval: int) -> None: ...

    def client_disconnected(self, client: ClientInfo, reason: str, *, disconnected_at: int,
                            sockname: str) -> None: ...

    def metrics(self) -> dict[str, Any]: ...
