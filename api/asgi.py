"""The api as an ASGI application: the Flask app behind a bridge that keeps waiting on clients out of its threads.

``python -m api.server`` serves ``api.server.create_asgi_app()`` with granian (fleetcore/http_server.py). Flask is
synchronous, so its views run on a fixed pool of ``API_THREADS`` threads, and nothing that waits on a client
happens in one of them:

* the request body is read whole on the event loop — at most ``API_MAX_REQUEST_BYTES`` (else 413), within
  ``API_BODY_TIMEOUT_S`` (else 408 and the connection is closed) — before a thread is taken: a client that
  trickles its body holds a socket, never a thread;
* the thread hands back the whole response and the event loop writes it, so a client that reads slowly holds
  no thread either;
* a view may hand its response over to a stream (``stream_response``): the view authenticates and answers the
  head, its thread returns, and the event loop writes the stream's chunks until the client leaves. A
  server-sent-event stream (api/events.py) costs a coroutine, not a thread.

Under a plain WSGI server (Flask's test client, ``flask run``) a streamed response is empty: the stream needs
this bridge.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor

from flask import Response, request

from fleetcore.errors import HttpError, unexpected
from fleetcore.logs import log_event

STREAM = "fleet.stream"   # WSGI environ key: the chunks of a streamed response (set by ``stream_response``)
log = logging.getLogger("api.asgi")


def stream_response(chunks: Callable[[], AsyncGenerator[bytes, None]], mimetype: str,
                    headers: dict[str, str] | None = None) -> Response:
    """From a view: answer 200 with this head, then whatever ``chunks()`` yields, written by the event loop."""
    request.environ[STREAM] = chunks
    return Response(mimetype=mimetype, headers=headers)


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


def wsgi_environ(scope: dict, body: bytes) -> dict:
    """PEP 3333 environ of an ASGI HTTP request whose body has been read whole."""
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf-8", "surrogateescape").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    server_host, server_port = scope.get("server") or ("localhost", 80)
    environ["SERVER_NAME"], environ["SERVER_PORT"] = server_host, str(server_port)
    if scope.get("client"):
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = scope["client"][0], str(scope["client"][1])
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1")
        if "_" in name:
            continue  # X_Fleet_Token would become the same variable as X-Fleet-Token: drop it, as gunicorn does
        key = {"content-length": "CONTENT_LENGTH", "content-type": "CONTENT_TYPE"}.get(
            name, "HTTP_" + name.upper().replace("-", "_"))
        value = raw_value.decode("latin-1")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    if body or "CONTENT_LENGTH" in environ:
        environ["CONTENT_LENGTH"] = str(len(body))  # a chunked body is whole now: the app sees its length
    return environ


class WsgiBridge:
    """ASGI application serving a WSGI application from ``threads`` threads (see the module docstring)."""

    def __init__(self, app, *, threads: int, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            body = await asyncio.wait_for(self._read_body(scope, receive), self.body_timeout_s)
        except _BodyTooLarge:
            await _send_error(send, HttpError(413, f"the request body is larger than {self.max_body_bytes} bytes"))
            return
        except TimeoutError:
            log_event(log, "api.body_timeout", logging.WARNING, path=scope["path"][:200],
                      peer=(scope.get("client") or ("",))[0], timeout_s=self.body_timeout_s)
            await _send_error(send, HttpError(408, f"the request body did not arrive within "
                                                   f"{self.body_timeout_s:g} s"), close=True)
            return
        except _ClientGone:
            return
        environ = wsgi_environ(scope, body)
        status, headers, content = await asyncio.get_running_loop().run_in_executor(
            self.executor, self._run_wsgi, environ)
        stream = environ.get(STREAM)
        if stream is not None and status == 200:
            await self._stream(headers, stream, receive, send)
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _read_body(self, scope, receive) -> bytes:
        for name, value in scope["headers"]:
            if name == b"content-length" and value.strip().isdigit() and int(value) > self.max_body_bytes:
                raise _BodyTooLarge  # refused unread
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLarge
            if chunk:
                chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    def _run_wsgi(self, environ: dict) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """In a pool thread: call the application and collect its whole answer."""
        answer: dict = {}
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
            if exc_info and answer:
                raise exc_info[1].with_traceback(exc_info[2])
            answer["status"] = int(status.split(" ", 1)[0])
            answer["headers"] = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
            return chunks.append

        try:
            result = self.app(environ, start_response)
            try:
                chunks.extend(chunk for chunk in result if chunk)
            finally:
                getattr(result, "close", lambda: None)()
        except Exception:  # noqa: BLE001 - a bug must still answer JSON, as every error does
            error = unexpected("api", path=environ.get("PATH_INFO"), method=environ.get("REQUEST_METHOD"))
            return error.status, _json_headers(), json.dumps(error.body()).encode()
        return answer["status"], answer["headers"], b"".join(chunks)

    async def _stream(self, headers, chunks: Callable[[], AsyncGenerator[bytes, None]], receive, send) -> None:
        """Write the head, then each chunk, until the stream ends or the client leaves. (On SIGTERM granian
        waits for open streams up to fleetcore.http_server.GRACEFUL_STOP_S, then stops the process.)"""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(k, v) for k, v in headers if k != b"content-length"]})
        iterator = chunks()
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            while True:
                following = asyncio.ensure_future(anext(iterator))
                await asyncio.wait({following, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    await asyncio.gather(following, return_exceptions=True)
                    break
                if isinstance(following.exception(), StopAsyncIteration):
                    break
                await send({"type": "http.response.body", "body": following.result(), "more_body": True})
            if not gone.done():
                await send({"type": "http.response.body", "body": b""})
        except OSError:
            pass  # the client went away while a chunk was being written
        finally:
            gone.cancel()
            await iterator.aclose()

    @staticmethod
    async def _lifespan(receive, send) -> None:
        """Nothing to start or stop: the Flask app was built by the factory and needs no event loop."""
        while True:
            message = await receive()
            await send({"type": f"{message['type']}.complete"})
            if message["type"] == "lifespan.shutdown":
                return


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _json_headers(close: bool = False) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    return [*headers, (b"connection", b"close")] if close else headers


async def _send_error(send, error: HttpError, close: bool = False) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [*_json_headers(close), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
