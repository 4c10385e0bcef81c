"""The HTTP request EMQX's authn/authz HTTP backends send (emqx_auth_http_utils.erl), one aiohttp pool each.

URL, headers and body are templates; every placeholder renders as a string. POST sends the body as JSON
(or form-encoded when the content-type says so); GET sends it as query parameters. The pool size is the
connector limit, request_timeout bounds the whole request and connect_timeout the TCP connect.
"""
from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlencode

import aiohttp

from fleetcore.logs import log_event

from . import templates
from .config import HttpRequestConfig

log = logging.getLogger("emqx.standin.auth_http")


class HttpCallout:
    """One authenticator's or authorization source's HTTP client."""

    def __init__(self, config: HttpRequestConfig, name: str) -> None:
        self.config = config
        self.name = name
        self.url = templates.Template(config.url, where=f"{name}.url")
        self.headers = templates.compile_deep(config.headers, where=f"{name}.headers")
        self.body = templates.compile_deep(config.body, where=f"{name}.body")
        self.session: aiohttp.ClientSession | None = None
        # Authz parses a response without content-type as JSON; authn ignores it (emqx_authz_utils / emqx_authn_http).
        self.default_content_type: str | None = None

    async def start(self) -> None:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=self.config.pool_size, keepalive_timeout=30)
            timeout = aiohttp.ClientTimeout(total=self.config.request_timeout_s,
                                            sock_connect=self.config.connect_timeout_s)
            self.session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True)

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def build(self, variables: dict[str, Any]) -> tuple[str, str, dict[str, str], bytes | None]:
        """(method, url, headers, body bytes) for these variables — what EMQX would send."""
        method = self.config.method
        url = self.url.render(variables)
        headers = templates.render_deep(self.headers, variables)
        body = templates.render_deep(self.body, variables)
        if method == "get":
            if body:
                url = url + ("&" if "?" in url else "?") + urlencode(body)
            return method, url, headers, None
        content_type = headers.get("content-type", "application/json")
        if content_type.startswith("application/x-www-form-urlencoded"):
            return method, url, headers, urlencode(body).encode()
        return method, url, headers, json.dumps(body, separators=(",", ":")).encode()

    async def call(self, variables: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        """(status, parsed body or None). Status 0 means the request failed (connect error, timeout)."""
        if self.session is None:
            await self.start()
        assert self.session is not None
        method, url, headers, body = self.build(variables)
        try:
            async with self.session.request(method.upper(), url, headers=headers, data=body) as response:
                raw = await response.read()
                return response.status, parse_response_body(
                    response.headers.get("content-type", self.default_content_type), raw)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log_event(log, "http_server_query_failed", level=logging.ERROR, backend=self.name,
                      clientid=variables.get("clientid"), error=type(exc).__name__)
            return 0, None


def parse_response_body(content_type: str | None, raw: bytes) -> dict[str, Any] | None:
    """JSON or form body as a dict; None when the content type is unsupported or the body does not parse."""
    ctype = (content_type or "").lower()
    try:
        if ctype.startswith("application/json"):
            body = json.loads(raw or b"null")
            return body if isinstance(body, dict) else None
        if ctype.startswith("application/x-www-form-urlencoded"):
            from urllib.parse import parse_qsl
            return dict(parse_qsl(raw.decode("utf-8")))
    except (ValueError, UnicodeDecodeError):
        return None
    return None
