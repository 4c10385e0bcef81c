"""Load ``emqx.conf`` the way EMQX does: HOCON file, then ``EMQX_*`` environment overrides, then a strict check.

Environment overrides follow hocon_tconf.erl (docs/EMQX.md §2): ``EMQX_`` prefix, path separator ``__``, names
lower-cased, applied in alphabetical order; the value is parsed as a HOCON document, else as the value of a
``fake_key=`` line, else kept as a raw string; array elements are addressed with 1-based indexes (at most
length + 1, which appends); the value replaces what was at that path. Variables under roots EMQX does not know
are ignored, as EMQX does.

The result is a typed ``BrokerConfig``. A value EMQX would refuse (unknown field in a section we model, unknown
action type, a rule naming a missing action, a bad duration…) raises ``ConfigError`` naming it. Keys that EMQX
knows but the stand-in does not act on are collected in ``BrokerConfig.unimplemented`` and logged once at start.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyhocon import ConfigFactory, ConfigTree
from pyhocon.exceptions import ConfigException

from fleetcore.logs import log_event

from . import templates
from .authz_file import AclFileError, FileRule, load_acl_file
from .limiter import LimiterOptions, Rate

log = logging.getLogger("emqx.standin.config")

ENV_PREFIX = "EMQX_"

# Root names of EMQX 5.10's schema: env vars under other roots are ignored (hocon_tconf check_env/4).
EMQX_ROOTS = frozenset("""
node cluster dashboard api_key listeners mqtt authentication authorization authentication_settings connectors
actions sources rule_engine log license rpc broker sys_topics sysmon alarm flapping_detect force_shutdown force_gc
overload_protection conn_congestion stats durable_sessions durable_storage retainer delayed exhook gateway plugins
prometheus telemetry psk_authentication slow_subs topic_metrics auto_subscribe bridges limiter crl_cache
session_persistence banned file_transfer schema_registry opentelemetry rewrite trace message_transformation
schema_validation zones cluster_link mqtt_subscription message_queue
""".split())

# Roots the stand-in reads. Any other root present in the file is reported as unimplemented.
IMPLEMENTED_ROOTS = {"node", "dashboard", "api_key", "listeners", "mqtt", "authentication", "authorization",
                     "connectors", "actions", "rule_engine", "flapping_detect"}

NAME_RE = re.compile(r"^[0-9a-zA-Z][-0-9a-zA-Z_]*$")          # connector/action names (emqx_resource.erl)
RULE_ID_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.I)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb)?\s*$", re.I)
_SIZE_UNITS = {None: 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


class ConfigError(ValueError):
    """The configuration would be refused by EMQX or asks for something the stand-in cannot do."""


# -- value parsing -------------------------------------------------------------------------------------------

def parse_duration(value: Any, path: str, *, int_unit: float = 0.001) -> float:
    """EMQX duration ("100ms", "5s", "1m", "2h", "1h30m") → seconds. A bare integer is ``int_unit`` seconds (ms)."""
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a duration, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value) * int_unit
    if isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+", text):
            return int(text) * int_unit
        pos, total = 0, 0.0
        for match in _DURATION_RE.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
            pos = match.end()
        if pos == len(text) and text:
            return total
    raise ConfigError(f"{path}: invalid duration {value!r} (expected e.g. \"500ms\", \"5s\", \"1m\", \"2h\")")


def parse_bytesize(value: Any, path: str) -> int:
    """EMQX byte size ("1MB", "64KB", 1024) → bytes (1 KB = 1024 bytes)."""
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a byte size, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            unit = match.group(2).lower() if match.group(2) else None
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise ConfigError(f"{path}: invalid byte size {value!r} (expected e.g. \"1MB\", \"256KB\")")


_RATE_RE = re.compile(r"^(\d+)(kb|mb|gb|b|)(?:/(\d*)(ms|[smhd]))?$")


def parse_rate(value: Any, path: str, *, burst: bool = False) -> Rate | None:
    """A limiter rate or burst as emqx_limiter_schema:to_rate/1 and to_burst/1 read it: ``"10/s"``,
    ``"64KB/s"``, ``"300/10m"``, ``"100"`` (per second) or ``"infinity"`` (None; not allowed for a burst).
    A capacity or interval of 0 is refused."""
    text = _str(value, path).strip().lower()
    if text == "infinity":
        if burst:
            raise ConfigError(f"{path}: invalid_burst {value!r} (a burst cannot be infinity)")
        return None
    match = _RATE_RE.match(text)
    if not match:
        raise ConfigError(f"{path}: invalid_rate {value!r} (expected e.g. \"10/s\", \"64KB/s\", \"300/10m\")")
    capacity = int(match.group(1)) * {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}[match.group(2)]
    interval_ms = int(parse_duration((match.group(3) or "1") + (match.group(4) or "s"), path) * 1000)
    if interval_ms <= 0:
        raise ConfigError(f"{path}: invalid_interval in {value!r}")
    if capacity == 0 and not burst:
        raise ConfigError(f"{path}: invalid_rate {value!r} (the capacity must be positive)")
    return Rate(capacity, interval_ms)


def _limiter(sec: _Section, name: str) -> LimiterOptions | None:
    """``<name>_rate`` and ``<name>_burst`` of a listener (emqx_limiter:config/2): None = unlimited."""
    rate = parse_rate(sec.get(f"{name}_rate", "infinity"), sec.key(f"{name}_rate"))
    burst_raw = sec.get(f"{name}_burst")
    burst = parse_rate(burst_raw, sec.key(f"{name}_burst"), burst=True) if burst_raw is not None else None
    if rate is None:
        return None
    return LimiterOptions(rate, burst if burst is not None and burst.capacity > 0 else None)


def _bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{path}: expected true or false, got {value!r}")


def _int(value: Any, path: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{path}: expected an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{path}: must be >= {minimum}, got {number}")
    return number


def _str(value: Any, path: str) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return str(value)


def _enum(value: Any, path: str, allowed: tuple[str, ...]) -> str:
    text = str(value).lower()
    if text not in allowed:
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(allowed)}")
    return text


def _host_port(value: Any, path: str, default_port: int | None = None) -> tuple[str, int]:
    """"0.0.0.0:1883", "host:port", 1883 (all interfaces) or "host" (with a default port)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "0.0.0.0", value  # noqa: S104 - EMQX binds a bare port on all interfaces
    text = _str(value, path).strip()
    if text.isdigit():
        return "0.0.0.0", int(text)  # noqa: S104 - EMQX binds a bare port on all interfaces
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ConfigError(f"{path}: {value!r} has no port")
        return host, default_port
    if not port_text.isdigit():
        raise ConfigError(f"{path}: invalid port in {value!r}")
    return host, int(port_text)


# -- environment overrides -------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if isinstance(value, ConfigTree):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _has_unresolved(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_unresolved(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_unresolved(v) for v in value)
    return type(value).__module__.startswith("pyhocon")


def _has_empty_leaf(value: Any) -> bool:
    if isinstance(value, dict):
        return not value or any(_has_empty_leaf(v) for v in value.values())
    return value == ""


def parse_env_value(raw: str) -> Any:
    """An EMQX_* value as EMQX reads it (hocon_tconf read_hocon_val/2): HOCON document, then fake_key=, then raw."""
    if raw == "":
        return ""
    try:
        doc = _plain(ConfigFactory.parse_string(raw, resolve=False))
        # pyhocon reads `http://h:1/p` as {"http": ""} (`//` starts a comment); Erlang's parser rejects it.
        if isinstance(doc, dict) and doc and not _has_unresolved(doc) and \
                not (_has_empty_leaf(doc) and '""' not in raw):
            return doc
    except (ConfigException, Exception):  # noqa: BLE001, S110 - any parse failure means "not a document"
        pass
    try:
        boxed = ConfigFactory.parse_string("fake_key=" + raw, resolve=False)
        value = _plain(boxed.get("fake_key"))
        if not _has_unresolved(value):
            return value
    except (ConfigException, Exception):  # noqa: BLE001, S110 - not a value: the caller falls back
        pass
    return raw


def _put(conf: dict, path: list[str], value: Any, var: str) -> None:
    node: Any = conf
    for depth, key in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) < 1:
                raise ConfigError(f"{var}: {key!r} is not an array index (indexes start at 1)")
            index = int(key) - 1
            if index > len(node):
                raise ConfigError(f"{var}: bad_array_index {key}: the array has {len(node)} element(s), "
                                  f"so the index may be at most {len(node) + 1}")
            if index == len(node):
                node.append({})
            if last:
                node[index] = value
            else:
                if not isinstance(node[index], (dict, list)):
                    node[index] = {}
                node = node[index]
        elif last:
            node[key] = value
        else:
            child = node.get(key)
            if not isinstance(child, (dict, list)):
                child = {}
                node[key] = child
            node = child


def apply_env_overrides(conf: dict, environ: Mapping[str, str]) -> list[str]:
    """Apply EMQX_* variables to ``conf`` in place; return the names applied (never their values)."""
    applied = []
    for name in sorted(k for k in environ if k.startswith(ENV_PREFIX)):
        path = [part for part in name[len(ENV_PREFIX):].lower().split("__") if part]
        if not path or path[0] not in EMQX_ROOTS:
            continue
        _put(conf, path, parse_env_value(environ[name]), name)
        applied.append(name)
    return applied


# -- typed configuration ---------------------------------------------------------------------------------------

@dataclass
class ListenerConfig:
    type: str                       # tcp | ssl | ws | wss
    name: str
    enable: bool
    host: str
    port: int
    max_connections: int | None     # None = infinity
    ssl_options: dict[str, Any] = field(default_factory=dict)
    mqtt_path: str = "/mqtt"
    handshake_timeout_s: float = 15.0           # ssl_options.handshake_timeout (EMQX's default 15 s)
    messages: LimiterOptions | None = None      # messages_rate / messages_burst, per client
    bytes: LimiterOptions | None = None         # bytes_rate / bytes_burst, per client
    max_conn: LimiterOptions | None = None      # max_conn_rate / max_conn_burst, per listener

    @property
    def id(self) -> str:
        return f"{self.type}:{self.name}"


@dataclass
class MqttConfig:
    max_packet_size: int = 1024 * 1024
    session_expiry_interval_s: float = 7200.0
    max_mqueue_len: int = 1000
    max_inflight: int = 32
    retry_interval_s: float = 30.0
    keepalive_multiplier: float = 1.5
    idle_timeout_s: float = 15.0
    server_keepalive: int | None = None         # "disabled" = None; EMQX applies it to MQTT 5 clients only
    max_clientid_len: int = 65535
    max_topic_levels: int = 128
    max_qos_allowed: int = 2
    retain_available: bool = True
    wildcard_subscription: bool = True
    shared_subscription: bool = True


@dataclass
class FlappingConfig:
    """``flapping_detect`` (emqx_schema.erl fields("flapping_detect"), EMQX's defaults)."""

    enable: bool = False
    window_time_s: float = 60.0
    max_count: int = 15
    ban_time_s: float = 300.0


@dataclass
class HttpRequestConfig:
    """The HTTP request of an authenticator or an authorization source."""

    method: str
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    request_timeout_s: float
    connect_timeout_s: float
    pool_size: int


@dataclass
class AuthnConfig:
    mechanism: str
    backend: str
    enable: bool
    http: HttpRequestConfig

    @property
    def id(self) -> str:
        return f"{self.mechanism}:{self.backend}"


@dataclass
class AuthzSourceConfig:
    type: str                                  # http | file
    enable: bool
    http: HttpRequestConfig | None = None
    file_rules: list[FileRule] = field(default_factory=list)    # type = file: the compiled acl.conf


@dataclass
class AuthzConfig:
    no_match: str = "allow"
    deny_action: str = "ignore"
    cache_enable: bool = True
    cache_max_size: int = 32
    cache_ttl_s: float = 60.0
    cache_excludes: list[str] = field(default_factory=list)
    sources: list[AuthzSourceConfig] = field(default_factory=list)


@dataclass
class ResourceOpts:
    batch_size: int = 1
    batch_time_s: float = 0.0
    inflight_window: int = 100
    worker_pool_size: int = 16
    max_buffer_bytes: int = 256 * 1024 * 1024
    request_ttl_s: float = 45.0
    health_check_interval_s: float = 15.0
    health_check_timeout_s: float = 60.0


@dataclass
class PgsqlConnectorConfig:
    name: str
    enable: bool
    host: str
    port: int
    database: str
    username: str
    password: str
    pool_size: int = 8
    disable_prepared_statements: bool = False
    ssl_enable: bool = False
    health_check_interval_s: float = 15.0
    health_check_timeout_s: float = 60.0

    def __repr__(self) -> str:  # never show the password
        return (f"PgsqlConnectorConfig(name={self.name!r}, server={self.host}:{self.port}, "
                f"database={self.database!r}, username={self.username!r}, pool_size={self.pool_size})")


@dataclass
class HttpConnectorConfig:
    name: str
    enable: bool
    url: str
    headers: dict[str, str]
    connect_timeout_s: float = 15.0
    pool_size: int = 8
    health_check_interval_s: float = 15.0


@dataclass
class ActionConfig:
    type: str                       # pgsql | http
    name: str
    enable: bool
    connector: str
    parameters: dict[str, Any]
    resource_opts: ResourceOpts

    @property
    def id(self) -> str:
        return f"{self.type}:{self.name}"


@dataclass
class RuleConfig:
    id: str
    sql: str
    actions: list[str]
    enable: bool = True
    description: str = ""


@dataclass
class BrokerConfig:
    node_name: str = "emqx@127.0.0.1"
    data_dir: str = "data"
    dashboard_host: str = "0.0.0.0"  # noqa: S104 - EMQX's default
    dashboard_port: int = 0        # 0 = disabled (EMQX 5.x schema default)
    dashboard_username: str = "admin"    # EMQX's defaults; the embedded stack sets the password
    dashboard_password: str = "public"  # noqa: S105 - EMQX's documented default, replaced by every deployment
    api_key_bootstrap_file: str = ""
    listeners: list[ListenerConfig] = field(default_factory=list)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    flapping: FlappingConfig = field(default_factory=FlappingConfig)
    authentication: list[AuthnConfig] = field(default_factory=list)
    authorization: AuthzConfig = field(default_factory=AuthzConfig)
    pgsql_connectors: dict[str, PgsqlConnectorConfig] = field(default_factory=dict)
    http_connectors: dict[str, HttpConnectorConfig] = field(default_factory=dict)
    actions: dict[str, ActionConfig] = field(default_factory=dict)     # by id "pgsql:name"
    rules: dict[str, RuleConfig] = field(default_factory=dict)
    ignore_sys_message: bool = True
    unimplemented: list[str] = field(default_factory=list)            # dotted keys known to EMQX, not acted on
    env_overrides: list[str] = field(default_factory=list)            # names of the EMQX_* variables applied
    source_path: str = ""

    def log_summary(self) -> None:
        """The startup log line listing what the stand-in does not implement (never silently ignored)."""
        if self.unimplemented:
            log_event(log, "config.unimplemented_keys", level=logging.WARNING, keys=sorted(self.unimplemented))
        log_event(log, "config.loaded", path=self.source_path, env_overrides=self.env_overrides,
                  listeners=[lst.id for lst in self.listeners if lst.enable], authenticators=len(self.authentication),
                  authz_sources=len(self.authorization.sources), actions=sorted(self.actions),
                  rules=sorted(self.rules))


class _Section:
    """Reads one config object; reports leftover keys as unknown (strict) or unimplemented (known to EMQX)."""

    def __init__(self, raw: Any, path: str, cfg: BrokerConfig, *, known: set[str] | frozenset[str] = frozenset(),
                 strict: bool = True) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected an object, got {raw!r}")
        self.raw, self.path, self.cfg, self.known, self.strict = raw, path, cfg, known, strict
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.raw

    def get(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        value = self.raw.get(name, default)
        return default if value is None else value

    def section(self, name: str, **kw: Any) -> _Section:
        self.used.add(name)
        return _Section(self.raw.get(name), self.key(name), self.cfg, **kw)

    def done(self) -> None:
        for name in self.raw:
            if name in self.used:
                continue
            if name in self.known or not self.strict:
                self.cfg.unimplemented.append(self.key(name))
            else:
                raise ConfigError(f"{self.key(name)}: unknown field (EMQX would refuse this configuration)")


_COMMON_META = {"tags", "description"}
_HTTP_KNOWN = {"enable_pipelining", "ssl", "max_retries", "retry_interval", "pool_type", "request_base",
               "max_inactive"}
_RESOURCE_OPTS = {"batch_size", "batch_time", "inflight_window", "worker_pool_size", "max_buffer_bytes",
                  "request_ttl", "health_check_interval", "health_check_timeout", "query_mode", "buffer_mode",
                  "resume_interval", "metrics_flush_interval", "buffer_seg_bytes", "request_timeout",
                  "start_after_created", "start_timeout", "auto_restart_interval"}

AUTHN_VARS = {"clientid", "username", "password", "peerhost", "peerport", "proto_name", "mountpoint",
              "cert_subject", "cert_common_name", "cert_pem", "zone", "listener"}
AUTHZ_VARS = {"clientid", "username", "peerhost", "peerport", "proto_name", "mountpoint", "topic", "action",
              "qos", "retain", "cert_subject", "cert_common_name", "cert_pem", "zone", "listener", "access"}


def _allowed(names: set[str]):
    return lambda name: name in names or (name.startswith("client_attrs.") and len(name) > len("client_attrs."))


def _headers(raw: Any, path: str) -> dict[str, str]:
    if raw in (None, ""):
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected an object of header names to values, got a {type(raw).__name__}")
    headers = {}
    for name, value in raw.items():
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{path}.{name}: a header value must be a string")
        headers[str(name).lower()] = "" if value is None else templates.to_text(value)
    return headers


def _http_request(sec: _Section, default_timeout_s: float, allowed: set[str], what: str) -> HttpRequestConfig:
    method = _enum(sec.get("method", "post"), sec.key("method"), ("get", "post"))
    url = _str(sec.get("url"), sec.key("url")) if sec.has("url") else None
    if not url:
        raise ConfigError(f"{sec.key('url')}: required for {what}")
    if not re.match(r"^https?://", url):
        raise ConfigError(f"{sec.key('url')}: {url!r} is not an http:// or https:// URL")
    headers = _headers(sec.get("headers"), sec.key("headers"))
    if method == "get" and "content-type" in headers:
        raise ConfigError(f"{sec.key('headers')}: HTTP GET requests cannot include content-type header.")
    if method == "post":
        headers = {"content-type": "application/json", **headers}
    body = sec.get("body", {})
    if not isinstance(body, dict):
        raise ConfigError(f"{sec.key('body')}: expected an object")
    try:
        templates.compile_deep(body, _allowed(allowed), sec.key("body"))
        templates.compile_deep(headers, _allowed(allowed), sec.key("headers"))
        templates.Template(url, _allowed(allowed), sec.key("url"))
    except templates.TemplateError as exc:
        raise ConfigError(str(exc)) from None
    ssl = sec.get("ssl", {})
    if isinstance(ssl, dict) and _bool(ssl.get("enable", False), sec.key("ssl.enable")):
        sec.cfg.unimplemented.append(sec.key("ssl"))
    elif url.startswith("https://"):
        raise ConfigError(f"{sec.key('url')}: it's required to enable the TLS option to establish a https connection")
    pipelining = sec.get("enable_pipelining", 100)
    if _int(pipelining, sec.key("enable_pipelining")) != 1:
        sec.cfg.unimplemented.append(sec.key("enable_pipelining") + "(aiohttp does not pipeline: behaves as 1)")
    return HttpRequestConfig(
        method=method, url=url, headers=headers, body=body,
        request_timeout_s=parse_duration(sec.get("request_timeout", f"{default_timeout_s}s"),
                                         sec.key("request_timeout")),
        connect_timeout_s=parse_duration(sec.get("connect_timeout", "15s"), sec.key("connect_timeout")),
        pool_size=_int(sec.get("pool_size", 8), sec.key("pool_size"), 1),
    )


def _listeners(root: _Section, cfg: BrokerConfig) -> None:
    defaults = {"tcp": 1883, "ssl": 8883, "ws": 8083, "wss": 8084}
    raw = root.get("listeners", {})
    if not isinstance(raw, dict):
        raise ConfigError("listeners: expected an object")
    for ltype in raw:
        if ltype not in defaults:
            raise ConfigError(f"listeners.{ltype}: unknown listener type (tcp, ssl, ws, wss; quic is not supported)")
    for ltype, port in defaults.items():
        by_name = dict(raw.get(ltype) or {})
        by_name.setdefault("default", {})       # EMQX's default listeners exist even when not in the file
        for name, body in by_name.items():
            sec = _Section(body, f"listeners.{ltype}.{name}", cfg, strict=False)
            host, lport = _host_port(sec.get("bind", f"0.0.0.0:{port}"), sec.key("bind"))
            max_conn = sec.get("max_connections", "infinity")
            ssl_options: dict[str, Any] = {}
            handshake_timeout_s = 15.0
            if ltype in ("ssl", "wss"):
                ssl_options = dict(sec.get("ssl_options", {}) or {})
                handshake_timeout_s = parse_duration(ssl_options.pop("handshake_timeout", "15s"),
                                                     sec.key("ssl_options.handshake_timeout"))
            limits = {name: _limiter(sec, name) for name in ("messages", "bytes", "max_conn")}
            mqtt_path = "/mqtt"
            if ltype in ("ws", "wss"):
                ws = sec.section("websocket", strict=False)
                mqtt_path = _str(ws.get("mqtt_path", "/mqtt"), ws.key("mqtt_path"))
                ws.done()
            cfg.listeners.append(ListenerConfig(
                type=ltype, name=name, enable=_bool(sec.get("enable", True), sec.key("enable")), host=host,
                port=lport, ssl_options=ssl_options, mqtt_path=mqtt_path, handshake_timeout_s=handshake_timeout_s,
                messages=limits["messages"], bytes=limits["bytes"], max_conn=limits["max_conn"],
                max_connections=None if str(max_conn) == "infinity" else _int(max_conn, sec.key("max_connections"), 1),
            ))
            sec.done()


def _mqtt(root: _Section, cfg: BrokerConfig) -> None:
    sec = root.section("mqtt", strict=False)
    m = cfg.mqtt
    m.max_packet_size = parse_bytesize(sec.get("max_packet_size", "1MB"), sec.key("max_packet_size"))
    m.session_expiry_interval_s = parse_duration(sec.get("session_expiry_interval", "2h"),
                                                 sec.key("session_expiry_interval"))
    m.max_mqueue_len = _int(sec.get("max_mqueue_len", 1000), sec.key("max_mqueue_len"), 0)
    m.max_inflight = _int(sec.get("max_inflight", 32), sec.key("max_inflight"), 1)
    m.retry_interval_s = parse_duration(sec.get("retry_interval", "30s"), sec.key("retry_interval"))
    mult = sec.get("keepalive_multiplier", 1.5)
    if isinstance(mult, bool) or not isinstance(mult, (int, float, str)):
        raise ConfigError(f"{sec.key('keepalive_multiplier')}: expected a number")
    m.keepalive_multiplier = float(mult)
    idle = sec.get("idle_timeout", "15s")
    m.idle_timeout_s = float("inf") if idle == "infinity" else parse_duration(idle, sec.key("idle_timeout"))
    keepalive = sec.get("server_keepalive", "disabled")
    m.server_keepalive = None if keepalive == "disabled" else _int(keepalive, sec.key("server_keepalive"), 1)
    m.max_clientid_len = _int(sec.get("max_clientid_len", 65535), sec.key("max_clientid_len"), 23)
    m.max_topic_levels = _int(sec.get("max_topic_levels", 128), sec.key("max_topic_levels"), 1)
    m.max_qos_allowed = _int(sec.get("max_qos_allowed", 2), sec.key("max_qos_allowed"), 0)
    m.retain_available = _bool(sec.get("retain_available", True), sec.key("retain_available"))
    m.wildcard_subscription = _bool(sec.get("wildcard_subscription", True), sec.key("wildcard_subscription"))
    m.shared_subscription = _bool(sec.get("shared_subscription", True), sec.key("shared_subscription"))
    sec.done()


def _flapping_detect(root: _Section, cfg: BrokerConfig) -> None:
    sec = root.section("flapping_detect")
    f = cfg.flapping
    f.enable = _bool(sec.get("enable", False), sec.key("enable"))
    f.window_time_s = parse_duration(sec.get("window_time", "1m"), sec.key("window_time"))
    f.max_count = _int(sec.get("max_count", 15), sec.key("max_count"), 0)
    f.ban_time_s = parse_duration(sec.get("ban_time", "5m"), sec.key("ban_time"))
    sec.done()


def _authentication(root: _Section, cfg: BrokerConfig) -> None:
    raw = root.get("authentication", [])
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise ConfigError("authentication: expected an array of authenticators")
    for index, body in enumerate(raw, start=1):
        sec = _Section(body, f"authentication.{index}", cfg, known=_HTTP_KNOWN | {"precondition"})
        mechanism = _str(sec.get("mechanism"), sec.key("mechanism")) if sec.has("mechanism") else ""
        backend = _str(sec.get("backend"), sec.key("backend")) if sec.has("backend") else ""
        if (mechanism, backend) != ("password_based", "http"):
            raise ConfigError(f"authentication.{index}: authenticator {mechanism or '?'}:{backend or '?'} is not "
                              "supported by the stand-in (only password_based:http)")
        if sec.get("precondition"):
            raise ConfigError(f"{sec.key('precondition')}: authenticator preconditions are not supported")
        enable = _bool(sec.get("enable", True), sec.key("enable"))
        http = _http_request(sec, 5.0, AUTHN_VARS, "an HTTP authenticator")
        sec.done()
        cfg.authentication.append(AuthnConfig(mechanism, backend, enable, http))


_DEFAULT_FILE_SOURCE = [{"type": "file", "enable": True, "path": "${EMQX_ETC_DIR}/acl.conf"}]


def _authorization(root: _Section, cfg: BrokerConfig) -> None:
    sec = root.section("authorization", known={"node_cache"})
    az = cfg.authorization
    az.no_match = _enum(sec.get("no_match", "allow"), sec.key("no_match"), ("allow", "deny"))
    az.deny_action = _enum(sec.get("deny_action", "ignore"), sec.key("deny_action"), ("ignore", "disconnect"))
    cache = sec.section("cache")
    az.cache_enable = _bool(cache.get("enable", True), cache.key("enable"))
    az.cache_max_size = _int(cache.get("max_size", 32), cache.key("max_size"), 1)
    az.cache_ttl_s = parse_duration(cache.get("ttl", "1m"), cache.key("ttl"))
    excludes = cache.get("excludes", [])
    if not isinstance(excludes, list):
        raise ConfigError(f"{cache.key('excludes')}: expected an array of topic filters")
    az.cache_excludes = [str(e) for e in excludes]
    cache.done()
    node_cache = sec.get("node_cache", {})
    if isinstance(node_cache, dict) and _bool(node_cache.get("enable", False), "authorization.node_cache.enable"):
        raise ConfigError("authorization.node_cache.enable: the node-wide authz cache is not supported")
    sources = sec.get("sources", _DEFAULT_FILE_SOURCE)
    if not isinstance(sources, list):
        raise ConfigError("authorization.sources: expected an array")
    for index, body in enumerate(sources, start=1):
        ssec = _Section(body, f"authorization.sources.{index}", cfg, known=_HTTP_KNOWN)
        stype = _str(ssec.get("type"), ssec.key("type")) if ssec.has("type") else ""
        enable = _bool(ssec.get("enable", True), ssec.key("enable"))
        if stype == "file":
            _file_source(_Section(body, ssec.path, cfg), enable, cfg)
            continue
        if stype != "http":
            if not enable:
                continue
            raise ConfigError(f"authorization.sources.{index}: source type {stype or '?'!r} is not supported by the "
                              "stand-in (only http and file)")
        http = _http_request(ssec, 30.0, AUTHZ_VARS, "an HTTP authorization source")
        ssec.done()
        az.sources.append(AuthzSourceConfig(stype, enable, http))
    sec.done()


def _file_source(sec: _Section, enable: bool, cfg: BrokerConfig) -> None:
    """``type = file``: the rules of ``path`` (an acl.conf), read at start as EMQX reads them (authz_file.py).
    ``${EMQX_ETC_DIR}`` is the directory of the configuration file, where EMQX keeps both files."""
    sec.get("type"), sec.get("enable")
    path = _str(sec.get("path", "${EMQX_ETC_DIR}/acl.conf"), sec.key("path"))
    etc_dir = os.environ.get("EMQX_ETC_DIR") or (str(Path(cfg.source_path).parent) if cfg.source_path else ".")
    path = path.replace("${EMQX_ETC_DIR}", etc_dir)
    sec.done()
    if not enable:
        return
    try:
        rules = load_acl_file(path)
    except AclFileError as exc:
        raise ConfigError(f"{sec.key('path')}: {exc}") from None
    cfg.authorization.sources.append(AuthzSourceConfig("file", enable, file_rules=rules))


def _resource_opts(raw: Any, path: str, cfg: BrokerConfig) -> ResourceOpts:
    sec = _Section(raw, path, cfg, known=_RESOURCE_OPTS)
    o = ResourceOpts()
    o.batch_size = _int(sec.get("batch_size", 1), sec.key("batch_size"), 1)
    o.batch_time_s = parse_duration(sec.get("batch_time", "0ms"), sec.key("batch_time"))
    o.inflight_window = _int(sec.get("inflight_window", 100), sec.key("inflight_window"), 1)
    o.worker_pool_size = _int(sec.get("worker_pool_size", 16), sec.key("worker_pool_size"), 1)
    o.max_buffer_bytes = parse_bytesize(sec.get("max_buffer_bytes", "256MB"), sec.key("max_buffer_bytes"))
    o.request_ttl_s = parse_duration(sec.get("request_ttl", "45s"), sec.key("request_ttl"))
    o.health_check_interval_s = parse_duration(sec.get("health_check_interval", "15s"),
                                               sec.key("health_check_interval"))
    o.health_check_timeout_s = parse_duration(sec.get("health_check_timeout", "60s"), sec.key("health_check_timeout"))
    mode = sec.get("query_mode", "async")
    _enum(mode, sec.key("query_mode"), ("async", "sync"))
    sec.done()
    return o


def _check_name(kind: str, name: str) -> None:
    if not NAME_RE.match(name):
        raise ConfigError(f"{kind}.{name}: invalid name (must match ^[0-9a-zA-Z][-0-9a-zA-Z_]*$)")


def _connectors(root: _Section, cfg: BrokerConfig) -> None:
    raw = root.get("connectors", {})
    if not isinstance(raw, dict):
        raise ConfigError("connectors: expected an object")
    for ctype, by_name in raw.items():
        if ctype not in ("pgsql", "http"):
            raise ConfigError(f"connectors.{ctype}: connector type {ctype!r} is not supported (pgsql, http)")
        for name, body in (by_name or {}).items():
            _check_name(f"connectors.{ctype}", name)
            path = f"connectors.{ctype}.{name}"
            if ctype == "pgsql":
                sec = _Section(body, path, cfg, known=_COMMON_META | {"auto_reconnect"})
                for required in ("server", "database", "username"):
                    if not sec.has(required) or sec.get(required) in ("", None):
                        raise ConfigError(f"{sec.key(required)}: required")
                host, port = _host_port(sec.get("server"), sec.key("server"), 5432)
                ssl = sec.section("ssl", strict=False)
                ssl_enable = _bool(ssl.get("enable", False), ssl.key("enable"))
                if ssl_enable:
                    raise ConfigError(f"{ssl.key('enable')}: TLS to PostgreSQL is not supported by the stand-in")
                ssl.done()
                ropts = sec.section("resource_opts", known=_RESOURCE_OPTS)
                conn = PgsqlConnectorConfig(
                    name=name, enable=_bool(sec.get("enable", True), sec.key("enable")), host=host, port=port,
                    database=_str(sec.get("database"), sec.key("database")),
                    username=_str(sec.get("username"), sec.key("username")),
                    password=_secret(sec.get("password", ""), sec.key("password")),
                    pool_size=_int(sec.get("pool_size", 8), sec.key("pool_size"), 1),
                    disable_prepared_statements=_bool(sec.get("disable_prepared_statements", False),
                                                      sec.key("disable_prepared_statements")),
                    ssl_enable=ssl_enable,
                    health_check_interval_s=parse_duration(ropts.get("health_check_interval", "15s"),
                                                           ropts.key("health_check_interval")),
                    health_check_timeout_s=parse_duration(ropts.get("health_check_timeout", "60s"),
                                                          ropts.key("health_check_timeout")),
                )
                ropts.done()
                sec.done()
                cfg.pgsql_connectors[name] = conn
            else:
                sec = _Section(body, path, cfg, known=_COMMON_META | _HTTP_KNOWN | {"request_timeout"})
                url = _str(sec.get("url"), sec.key("url")) if sec.has("url") else ""
                if not re.match(r"^https?://", url):
                    raise ConfigError(f"{sec.key('url')}: required, an http:// or https:// URL")
                pipelining = _int(sec.get("enable_pipelining", 100), sec.key("enable_pipelining"))
                if pipelining != 1:
                    cfg.unimplemented.append(sec.key("enable_pipelining") + "(aiohttp does not pipeline: behaves as 1)")
                ssl = sec.get("ssl", {})
                if isinstance(ssl, dict) and _bool(ssl.get("enable", False), sec.key("ssl.enable")):
                    cfg.unimplemented.append(sec.key("ssl"))
                ropts = sec.section("resource_opts", known=_RESOURCE_OPTS)
                conn_http = HttpConnectorConfig(
                    name=name, enable=_bool(sec.get("enable", True), sec.key("enable")), url=url.rstrip("/"),
                    headers=_headers(sec.get("headers"), sec.key("headers")),
                    connect_timeout_s=parse_duration(sec.get("connect_timeout", "15s"), sec.key("connect_timeout")),
                    pool_size=_int(sec.get("pool_size", 8), sec.key("pool_size"), 1),
                    health_check_interval_s=parse_duration(ropts.get("health_check_interval", "15s"),
                                                           ropts.key("health_check_interval")),
                )
                ropts.done()
                sec.done()
                cfg.http_connectors[name] = conn_http


def _secret(value: Any, path: str) -> str:
    """A password field: a literal, or "file:///path" read from a file (emqx_schema_secret.erl)."""
    text = "" if value is None else _str(value, path)
    if text.startswith("file://"):
        try:
            return Path(text[len("file://"):]).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read secret file ({exc.strerror})") from None
    return text


def _actions(root: _Section, cfg: BrokerConfig) -> None:
    raw = root.get("actions", {})
    if not isinstance(raw, dict):
        raise ConfigError("actions: expected an object")
    for atype, by_name in raw.items():
        if atype not in ("pgsql", "http"):
            raise ConfigError(f"actions.{atype}: unknown action type {atype!r} (the stand-in supports pgsql, http)")
        for name, body in (by_name or {}).items():
            _check_name(f"actions.{atype}", name)
            sec = _Section(body, f"actions.{atype}.{name}", cfg, known=_COMMON_META)
            connector = _str(sec.get("connector"), sec.key("connector")) if sec.has("connector") else ""
            connectors = cfg.pgsql_connectors if atype == "pgsql" else cfg.http_connectors
            if connector not in connectors:
                raise ConfigError(f"{sec.key('connector')}: connector {atype}:{connector or '?'} does not exist")
            if sec.get("local_topic"):
                raise ConfigError(f"{sec.key('local_topic')}: local_topic is not supported (drive actions by rules)")
            if sec.get("fallback_actions"):
                raise ConfigError(f"{sec.key('fallback_actions')}: fallback actions are not supported")
            params = sec.section("parameters")
            parameters: dict[str, Any] = {}
            try:
                if atype == "pgsql":
                    sql = params.get("sql")
                    if not sql:
                        raise ConfigError(f"{params.key('sql')}: required (the stand-in has no default SQL)")
                    parameters["sql"] = templates.SqlTemplate(_str(sql, params.key("sql")), params.key("sql"))
                else:
                    parameters["path"] = templates.Template(_str(params.get("path", ""), params.key("path")),
                                                            where=params.key("path"))
                    parameters["method"] = _enum(params.get("method", "post"), params.key("method"),
                                                 ("post", "put", "get", "delete"))
                    parameters["headers"] = templates.compile_deep(
                        _headers(params.get("headers"), params.key("headers")), where=params.key("headers"))
                    body = params.get("body")
                    parameters["body"] = None if body in (None, "") else templates.Template(
                        _str(body, params.key("body")), where=params.key("body"))
                    parameters["max_retries"] = _int(params.get("max_retries", 2), params.key("max_retries"), 0)
                    parameters["request_timeout_s"] = parse_duration(params.get("request_timeout", "15s"),
                                                                     params.key("request_timeout"))
            except templates.TemplateError as exc:
                raise ConfigError(str(exc)) from None
            params.done()
            ropts = _resource_opts(sec.get("resource_opts", {}), sec.key("resource_opts"), cfg)
            action = ActionConfig(atype, name, _bool(sec.get("enable", True), sec.key("enable")), connector,
                                  parameters, ropts)
            sec.done()
            cfg.actions[action.id] = action


def _rules(root: _Section, cfg: BrokerConfig) -> None:
    from .rules.sql import RuleSqlError, parse_rule_sql  # local: the rules package imports this module

    sec = root.section("rule_engine", known={"jq_function_default_timeout", "jq_implementation_module"})
    cfg.ignore_sys_message = _bool(sec.get("ignore_sys_message", True), sec.key("ignore_sys_message"))
    rules = sec.get("rules", {})
    if not isinstance(rules, dict):
        raise ConfigError("rule_engine.rules: expected an object")
    for rule_id, body in rules.items():
        if not RULE_ID_RE.match(rule_id):
            raise ConfigError(f"rule_engine.rules.{rule_id}: invalid rule id")
        rsec = _Section(body, f"rule_engine.rules.{rule_id}", cfg, known={"metadata", "name"})
        sql = _str(rsec.get("sql"), rsec.key("sql")) if rsec.has("sql") else ""
        if not sql.strip():
            raise ConfigError(f"{rsec.key('sql')}: required")
        try:
            parse_rule_sql(sql)
        except RuleSqlError as exc:
            raise ConfigError(f"{rsec.key('sql')}: {exc}") from None
        actions = rsec.get("actions", [])
        if not isinstance(actions, list):
            raise ConfigError(f"{rsec.key('actions')}: expected an array")
        names = []
        for i, action in enumerate(actions, start=1):
            if isinstance(action, dict):
                raise ConfigError(f"{rsec.key('actions')}.{i}: built-in action "
                                  f"{action.get('function', '?')!r} is not supported (use pgsql:/http: actions)")
            text = _str(action, f"{rsec.key('actions')}.{i}")
            atype, sep, _ = text.partition(":")
            if not sep or atype not in ("pgsql", "http"):
                raise ConfigError(f"{rsec.key('actions')}.{i}: {text!r} is not a known action type "
                                  "(expected \"pgsql:<name>\" or \"http:<name>\")")
            if text not in cfg.actions:
                raise ConfigError(f"{rsec.key('actions')}.{i}: action {text!r} does not exist")
            names.append(text)
        cfg.rules[rule_id] = RuleConfig(rule_id, sql, names, _bool(rsec.get("enable", True), rsec.key("enable")),
                                        str(rsec.get("description", "")))
        rsec.done()
    sec.done()


def build_config(conf: dict, *, source_path: str = "", env_overrides: list[str] | None = None) -> BrokerConfig:
    """Typed, validated configuration from an already merged plain dict."""
    cfg = BrokerConfig(source_path=source_path, env_overrides=env_overrides or [])
    root = _Section(conf, "", cfg, known=EMQX_ROOTS)
    node = root.section("node", strict=False)
    cfg.node_name = _str(node.get("name", cfg.node_name), node.key("name"))
    cfg.data_dir = _str(node.get("data_dir", cfg.data_dir), node.key("data_dir"))
    node.done()      # node.cookie (Erlang distribution) has no meaning here: reported as unimplemented
    dash = root.section("dashboard", strict=False)
    http = _Section(dash.section("listeners", strict=False).raw.get("http"), "dashboard.listeners.http", cfg,
                    strict=False)
    cfg.dashboard_host, cfg.dashboard_port = _host_port(http.get("bind", 0), http.key("bind"))
    http.done()
    cfg.dashboard_username = _str(dash.get("default_username", cfg.dashboard_username), dash.key("default_username"))
    cfg.dashboard_password = _str(dash.get("default_password", cfg.dashboard_password), dash.key("default_password"))
    for other in dash.raw.get("listeners", {}) or {}:
        if other != "http":
            cfg.unimplemented.append(f"dashboard.listeners.{other}")
    dash.done()
    api_key = root.section("api_key", strict=False)
    cfg.api_key_bootstrap_file = _str(api_key.get("bootstrap_file", ""), api_key.key("bootstrap_file"))
    api_key.done()
    _listeners(root, cfg)
    _mqtt(root, cfg)
    _flapping_detect(root, cfg)
    _authentication(root, cfg)
    _authorization(root, cfg)
    _connectors(root, cfg)
    _actions(root, cfg)
    _rules(root, cfg)
    root.done()      # cluster.* (single node) and other roots are reported as unimplemented
    return cfg


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> BrokerConfig:
    """Parse ``path`` (HOCON), apply EMQX_* overrides from ``environ`` and validate. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    try:
        tree = ConfigFactory.parse_file(str(path), resolve=True)
    except (ConfigException, Exception) as exc:  # noqa: BLE001 - any HOCON failure is a config error
        if isinstance(exc, OSError):
            raise ConfigError(f"{path}: {exc.strerror}") from None
        raise ConfigError(f"{path}: HOCON parse error: {exc}") from None
    conf = _plain(tree)
    applied = apply_env_overrides(conf, environ)
    return build_config(conf, source_path=str(path), env_overrides=applied)
