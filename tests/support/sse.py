"""A server-sent-event client for tests: reads a stream on a thread and lets the test wait for events.

``EventStream(url, token)`` opens ``GET /api/v1/events`` (with ``last_event_id``, a resume); ``wait_for(pred)``
returns the first event, in order of arrival, that the predicate accepts, within a deadline.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests


@dataclass
class Event:
    event: str
    data: str
    id: str | None
    received: float          # time.time() when its last line arrived

    def json(self) -> Any:
        return json.loads(self.data)


class EventStream:
    def __init__(self, api_url: str, token: str, last_event_id: str | None = None, timeout: float = 20.0) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.response = requests.get(f"{api_url}/api/v1/events", headers=headers, stream=True, timeout=timeout)
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["Content-Type"].startswith("text/event-stream")
        self.events: queue.Queue[Event | None] = queue.Queue()
        self.seen: list[Event] = []
        self.comments: list[str] = []
        self.last_id: str | None = None
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            for line in self.response.iter_lines(decode_unicode=True):
                if line is None:
                    continue
                if line == "":
                    if "data" in fields or "event" in fields:
                        event = Event(fields.get("event", "message"), fields.get("data", ""), fields.get("id"),
                                      time.time())
                        if event.id is not None:
                            self.last_id = event.id
                        self.events.put(event)
                    fields = {}
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
        except (requests.RequestException, AttributeError, ValueError):
            pass  # closed by the test
        finally:
            self.closed.set()
            self.events.put(None)

    def wait_for(self, predicate: Callable[[Event], bool] = lambda e: True, timeout: float = 15.0,
                 what: str = "an event") -> Event:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout:.0f} s; seen: "
                                     f"{[(e.event, e.data[:120]) for e in self.seen][-10:]}")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if event is None:
                raise AssertionError(f"the stream ended before {what}; seen: "
                                     f"{[(e.event, e.data[:120]) for e in self.seen][-10:]}")
            self.seen.append(event)
            if predicate(event):
                return event

    def close(self) -> None:
        self.response.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def vehicle_rows(event: Event) -> list[dict]:
    """The vehicles of a ``snapshot`` or ``vehicles`` event as dicts (api/queries/live.py, VEHICLE_COLUMNS)."""
    from api.queries.live import VEHICLE_COLUMNS
    body = event.json()
    rows = body["vehicles"] if event.event == "snapshot" else body["rows"]
    return [dict(zip(VEHICLE_COLUMNS, row, strict=True)) for row in rows]
