"""``http`` connector and action (EMQX's webhook): one aiohttp session per connector.

URL = connector url + rendered ``path``; headers = connector headers + action headers; body = the rendered
``body`` template, or — when there is none — the rule output as one JSON object. A 2xx answer is success. As in
EMQX 5.10.4 (apps/emqx_bridge_http/src/emqx_bridge_http_connector.erl ``transform_result``): only 429, 503 and a
transport failure (refused, timed out, closed) are recoverable — retried ``max_retries`` times at once
(``maybe_retry``) and then, with backoff, until ``request_ttl``; every other status (400, 404, 500, 502…) is an
unrecoverable error: the message is counted ``failed`` and not retried.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

from ...config import ActionConfig, HttpConnectorConfig
from ...templates import Template, render_deep
from .base import BufferedAction, Item, Recoverable, Unrecoverable

log = logging.getLogger("emqx.standin.rules.http")

RETRIED_STATUSES = frozenset({429, 503})     # emqx_bridge_http_connector transform_result: recoverable_error


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def output_json(output: dict[str, Any]) -> bytes:
    """The rule output as EMQX sends it when the action has no body template."""
    return json.dumps(output, separators=(",", ":"), default=_json_default, ensure_ascii=False).encode("utf-8")


class HttpConnector:
    def __init__(self, config: HttpConnectorConfig) -> None:
        self.config = config
        self.name = config.name
        self.session: aiohttp.ClientSession | None = None
        self.status = "connecting"

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.config.pool_size, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(sock_connect=self.config.connect_timeout_s))
        self.status = "connected"

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


class HttpAction(BufferedAction):
    type = "http"

    def __init__(self, config: ActionConfig, connector: HttpConnector) -> None:
        super().__init__(config, connector.config.pool_size)
        self.connector = connector
        params = config.parameters
        self.path: Template = params["path"]
        self.method: str = params["method"].upper()
        self.headers = params["headers"]
        self.body: Template | None = params["body"]
        self.max_retries: int = params["max_retries"]
        self.request_timeout = aiohttp.ClientTimeout(total=params["request_timeout_s"],
                                                     sock_connect=connector.config.connect_timeout_s)
        # The rule output has no batching for HTTP: one request per message.
        self.opts.batch_size = 1

    @property
    def status(self) -> str:
        return self.connector.status

    def render(self, output: dict[str, Any]) -> tuple[Any, int]:
        path = self.path.render(output)
        url = self.connector.config.url + (path if path.startswith("/") or not path else "/" + path)
        headers = {**self.connector.config.headers, **render_deep(self.headers, output)}
        headers.setdefault("content-type", "application/json")
        body = output_json(output) if self.body is None else self.body.render(output).encode("utf-8")
        return (url, headers, body), len(body) + 256

    async def _request_once(self, url: str, headers: dict[str, str], body: bytes) -> int:
        session = self.connector.session
        if session is None:
            raise Recoverable("connector stopped")
        async with session.request(self.method, url, headers=headers,
                                   data=body if self.method != "GET" else None,
                                   timeout=self.request_timeout) as response:
            await response.read()
            return response.status

    async def execute(self, batch: list[Item]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        for item in batch:
            url, headers, body = item.payload
            last_error = ""
            for _ in range(self.max_retries + 1):
                try:
                    status = await self._request_once(url, headers, body)
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                    self.connector.status = "disconnected"
                    continue
                self.connector.status = "connected"
                if 200 <= status < 300:
                    results.append(None)
                    break
                if status in RETRIED_STATUSES:
                    last_error = f"HTTP {status}"
                    continue
                results.append(Unrecoverable(f"HTTP {status}"))
                break
            else:
                raise Recoverable(last_error)
        return results
