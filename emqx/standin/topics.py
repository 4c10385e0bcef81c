"""Generic MQTT topic names, topic filters and a subscription trie (MQTT 3.1.1 §4.7).

This is protocol-level matching for the broker. The *fleet's* topic tree (``fleet/v1/{vid}/…``) is built and
parsed in ``fleetcore.topics``; nothing here knows about it.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

S = TypeVar("S")

MAX_TOPIC_BYTES = 65535


def valid_topic_name(topic: str) -> bool:
    """A name a PUBLISH may carry: non-empty, no wildcards (MQTT-3.3.2-2, MQTT-4.7.3-1)."""
    return bool(topic) and "+" not in topic and "#" not in topic and len(topic.encode("utf-8")) <= MAX_TOPIC_BYTES


def valid_topic_filter(topic_filter: str) -> bool:
    """A filter a SUBSCRIBE may carry: ``+`` alone in a level, ``#`` alone and last (MQTT-4.7.1-2/3)."""
    if not topic_filter or len(topic_filter.encode("utf-8")) > MAX_TOPIC_BYTES:
        return False
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):
            return False
        if "+" in level and level != "+":
            return False
    return True


def has_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


def filter_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` (a name) matches ``topic_filter``; wildcards at the first level skip ``$`` topics."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    flevels = topic_filter.split("/")
    tlevels = topic.split("/")
    for index, flevel in enumerate(flevels):
        if flevel == "#":
            return True
        if index >= len(tlevels):
            return False
        if flevel != "+" and flevel != tlevels[index]:
            return False
    return len(flevels) == len(tlevels)


class _Node(Generic[S]):
    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node[S]] = {}
        self.subscribers: dict[S, int] = {}       # subscriber → granted QoS


class SubscriptionTrie(Generic[S]):
    """Topic filter → {subscriber: qos}, with ``match(topic)`` → [(subscriber, granted qos)], one entry per
    matching subscription: a client whose filters overlap gets one copy per filter, each at that filter's QoS, as
    from EMQX (emqx_broker dispatches per matched filter; MQTT-3.3.5-1 allows both this and a single copy).

    Lookups are cached per topic name; any subscription change clears the cache (subscriptions change rarely
    compared to publishes, and most published topics — telemetry — have no subscriber at all).
    """

    CACHE_LIMIT = 50_000

    def __init__(self) -> None:
        self._root: _Node[S] = _Node()
        self._cache: dict[str, list[tuple[S, int]]] = {}
        self.count = 0

    def add(self, topic_filter: str, subscriber: S, qos: int) -> bool:
        """Add or update; returns True if the (filter, subscriber) pair is new."""
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        new = subscriber not in node.subscribers
        node.subscribers[subscriber] = qos
        if new:
            self.count += 1
        self._cache.clear()
        return new

    def remove(self, topic_filter: str, subscriber: S) -> bool:
        path: list[tuple[_Node[S], str]] = []
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if node.subscribers.pop(subscriber, None) is None:
            return False
        self.count -= 1
        # prune empty branches
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.subscribers or child.children:
                break
            del parent.children[level]
        self._cache.clear()
        return True

    def match(self, topic: str) -> list[tuple[S, int]]:
        """(subscriber, granted QoS) of every subscription whose filter matches ``topic``.

        The returned list is shared with the cache: callers must not modify it.
        """
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        result: list[tuple[S, int]] = []
        levels = topic.split("/")
        dollar = topic.startswith("$")
        self._walk(self._root, levels, 0, result, dollar)
        if len(self._cache) >= self.CACHE_LIMIT:
            self._cache.clear()
        self._cache[topic] = result
        return result

    def _walk(self, node: _Node[S], levels: list[str], index: int, result: list[tuple[S, int]],
              dollar: bool) -> None:
        children = node.children
        skip_wildcards = dollar and index == 0
        if not skip_wildcards:
            multi = children.get("#")
            if multi is not None:
                _merge(result, multi.subscribers)
        if index == len(levels):
            return
        last = index + 1 == len(levels)
        exact = children.get(levels[index])
        if exact is not None:
            if last:
                _merge(result, exact.subscribers)
                # "a/#" also matches "a" (MQTT-4.7.1-2): the parent level of "#"
                multi = exact.children.get("#")
                if multi is not None:
                    _merge(result, multi.subscribers)
            else:
                self._walk(exact, levels, index + 1, result, dollar)
        if not skip_wildcards:
            single = children.get("+")
            if single is not None:
                if last:
                    _merge(result, single.subscribers)
                    multi = single.children.get("#")
                    if multi is not None:
                        _merge(result, multi.subscribers)
                else:
                    self._walk(single, levels, index + 1, result, dollar)

    def filters(self) -> Iterator[tuple[str, S, int]]:
        """Every (filter, subscriber, qos); for stats and tests."""
        stack: list[tuple[_Node[S], list[str]]] = [(self._root, [])]
        while stack:
            node, prefix = stack.pop()
            for subscriber, qos in node.subscribers.items():
                yield "/".join(prefix), subscriber, qos
            for level, child in node.children.items():
                stack.append((child, [*prefix, level]))


def _merge(result: list, subscribers: dict) -> None:
    result.extend(subscribers.items())


def matching(topic_filter: str, topics: Iterable[str]) -> Iterator[str]:
    """The topic names among ``topics`` that ``topic_filter`` matches (retained-message lookup)."""
    if not has_wildcard(topic_filter):
        if topic_filter in topics:
            yield topic_filter
        return
    for topic in topics:
        if filter_matches(topic_filter, topic):
            yield topic
