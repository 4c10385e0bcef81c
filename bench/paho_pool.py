"""Drive many paho-mqtt clients from one thread with a selector, so a load generator can hold 1,000 vehicles
without 1,000 network threads (paho's loop_start() starts one thread per client)."""
from __future__ import annotations

import selectors
import time

import paho.mqtt.client as mqtt


class ClientPool:
    """A set of connected paho clients whose sockets are serviced by one selector loop."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.clients: list[mqtt.Client] = []

    def add(self, client: mqtt.Client) -> None:
        """Register a client on which connect() (not connect_async) has already been called."""
        self.clients.append(client)
        self.selector.register(client.socket(), selectors.EVENT_READ, client)

    def run_once(self, timeout: float = 0.01) -> None:
        for client in self.clients:
            if client.want_write():
                client.loop_write()
        for key, _ in self.selector.select(timeout):
            key.data.loop_read()

    def run_until(self, done, deadline: float, misc_every: float = 1.0) -> bool:
        """Service sockets until done() is true or the deadline passes; returns done()."""
        last_misc = time.monotonic()
        while not done():
            now = time.monotonic()
            if now > deadline:
                return False
            self.run_once()
            if now - last_misc > misc_every:
                for client in self.clients:
                    client.loop_misc()
                last_misc = now
        return True

    def close(self) -> None:
        for client in self.clients:
            try:
                self.selector.unregister(client.socket())
            except (KeyError, ValueError, TypeError):
                pass
            client.disconnect()
            client.loop_write()
        self.selector.close()
