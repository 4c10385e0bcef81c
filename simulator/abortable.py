"""A ``requests.Session`` whose requests under way can be ended from another thread.

A long-poll blocks its thread for up to 25 s waiting for the api's answer, and neither a request timeout (it must
exceed the wait) nor ``Session.close()`` (it drops idle connections only, not the one a request holds) ends it
sooner. So the session remembers every connection it opens, and ``abort()`` shuts their sockets down: a blocked read
returns at once, the request raises a ``requests.RequestException``, and every connection opened afterwards is shut
down as soon as it connects, so no new request gets through either. It is how ``simulator.http_link`` joins its
threads promptly when a vehicle stops.
"""
from __future__ import annotations

import socket
import threading
import weakref
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

# The adapter a request goes through, for the connection it opens (urllib3 connects on the requesting thread).
_current = threading.local()


def _shut(connection: HTTPConnection) -> None:
    sock = connection.sock
    if sock is None:
        return
    try:
        # The plain socket's shutdown, also under TLS: ssl.SSLSocket.shutdown would drop its TLS state under the
        # thread reading from it; this only makes that read see the end of the stream.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass            # already closed


class _Tracked:
    """Mixed into urllib3's connections: register with the aborting adapter once connected."""

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        adapter: _AbortingAdapter | None = getattr(_current, "adapter", None)
        if adapter is not None:
            adapter.opened(self)  # type: ignore[arg-type]


class _TrackedHTTPConnection(_Tracked, HTTPConnection):
    pass


class _TrackedHTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _AbortingAdapter(HTTPAdapter):
    def __init__(self) -> None:
        self._connections: weakref.WeakSet[HTTPConnection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.aborted = False
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):   # HTTP(S)_PROXY: the same pools (a SOCKS one is not tracked)
            manager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}
        return manager

    def send(self, request, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        _current.adapter = self
        try:
            return super().send(request, *args, **kwargs)
        finally:
            _current.adapter = None

    def opened(self, connection: HTTPConnection) -> None:
        with self._lock:
            self._connections.add(connection)
            aborted = self.aborted
        if aborted:
            _shut(connection)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)


class AbortableSession(requests.Session):
    def __init__(self) -> None:
        super().__init__()
        self._adapter = _AbortingAdapter()
        self.mount("http://", self._adapter)
        self.mount("https://", self._adapter)

    @property
    def aborted(self) -> bool:
        return self._adapter.aborted

    def abort(self) -> None:
        """End the requests under way now and refuse later ones (thread-safe; cannot be undone)."""
        self._adapter.abort()
