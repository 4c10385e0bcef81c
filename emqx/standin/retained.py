"""Retained messages: the last retained PUBLISH per topic, delivered to a new matching subscription.

Only the filter that was just subscribed (and authorized) is looked up — never other clients' filters: amqtt
0.12.1 sent every new client the retained messages matching anyone's subscription, past the ACL. An empty
retained payload deletes the topic's message.
"""
from __future__ import annotations

from collections.abc import Iterator

from .topics import matching


class RetainedStore:
    def __init__(self) -> None:
        self._messages: dict[str, tuple[bytes, int]] = {}       # topic → (payload, qos)

    def store(self, topic: str, payload: bytes, qos: int) -> None:
        if payload:
            self._messages[topic] = (payload, qos)
        else:
            self._messages.pop(topic, None)

    def lookup(self, topic_filter: str) -> Iterator[tuple[str, bytes, int]]:
        """(topic, payload, qos) of every retained message the filter matches."""
        messages = self._messages
        for topic in list(matching(topic_filter, messages)):
            payload, qos = messages[topic]
            yield topic, payload, qos

    def get(self, topic: str) -> tuple[bytes, int] | None:
        return self._messages.get(topic)

    def __len__(self) -> int:
        return len(self._messages)
