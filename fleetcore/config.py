"""Reading settings from the environment.

Every service is configured by environment variables only (twelve-factor); nothing secret has a default.
A secret may also be given as a file path in ``<NAME>_FILE`` (Docker/Kubernetes secrets).

A service's settings are a frozen dataclass whose fields name their variable once, with their one default::

    @dataclass(frozen=True)
    class ApiConfig(ServiceConfig):
        jwt_secret: str = secret("FLEET_JWT_SECRET", min_length=32)
        db_pool_size: int = setting("API_DB_POOL_SIZE", 20)

``ApiConfig.from_env()`` reads every such field (its type follows the default); tests construct the dataclass
directly. A field without a variable keeps its plain default.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

_Config = TypeVar("_Config", bound="Settings")


class ConfigError(RuntimeError):
    """A required setting is missing or malformed; the message names the variable."""


def env_str(name: str, default: str | None = None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    value = env.get(name)
    if value is None or value == "":
        if default is None:
            raise ConfigError(f"environment variable {name} is required")
        return default
    return value


def env_int(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float, env: Mapping[str, str] | None = None) -> float:
    env = os.environ if env is None else env
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be a number, got {raw!r}") from None


def env_bool(name: str, default: bool, env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"environment variable {name} must be true or false, got {raw!r}")


def env_secret(name: str, env: Mapping[str, str] | None = None, min_length: int = 16) -> str:
    """A required secret from ``NAME`` or from the file named by ``NAME_FILE``.

    Secrets never have defaults: production must provide them, and the embedded stack generates them
    on first run. The value is never included in an error message.
    """
    env = os.environ if env is None else env
    value = env.get(name)
    file_name = env.get(f"{name}_FILE")
    if not value and file_name:
        try:
            with open(file_name, encoding="utf-8") as handle:
                value = handle.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {name}_FILE={file_name}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"secret {name} is required (set {name} or {name}_FILE)")
    if len(value) < min_length:
        raise ConfigError(f"secret {name} is too short (at least {min_length} characters)")
    return value


# -- settings as dataclass fields -------------------------------------------------------------------------------
_READERS: dict[type, Callable[..., Any]] = {str: env_str, int: env_int, float: env_float, bool: env_bool}


def setting(name: str, default: str | int | float | bool, *, minimum: float | None = None) -> Any:
    """A field read from the variable ``name``; ``default`` (its type decides the parsing) when it is unset. A
    number below ``minimum`` is refused (a zero poll interval would spin, a zero set size would never drain)."""
    read = _READERS[type(default)]

    def read_checked(env: Mapping[str, str] | None) -> Any:
        value = read(name, default, env=env)
        if minimum is not None and value < minimum:
            raise ConfigError(f"environment variable {name} must be at least {minimum}, got {value!r}")
        return value
    return dataclasses.field(default=default, metadata={"env": name, "read": read_checked})


def required(name: str) -> Any:
    """A field that must be set (a URL, a key name): no default."""
    return dataclasses.field(metadata={"env": name, "read": lambda env: env_str(name, env=env)})


def secret(name: str, min_length: int = 16) -> Any:
    """A secret field (``NAME`` or ``NAME_FILE``), required, at least ``min_length`` characters; left out of the
    dataclass's repr, so logging a configuration never logs it."""
    return dataclasses.field(repr=False, metadata={
        "env": name, "read": lambda env: env_secret(name, env=env, min_length=min_length)})


@dataclasses.dataclass(frozen=True)
class Settings:
    """A frozen dataclass whose fields name their variables (``setting``, ``required``, ``secret``)."""

    @classmethod
    def from_env(cls: type[_Config], env: Mapping[str, str] | None = None) -> _Config:
        """Every field that names a variable, read from ``env`` (default: the process environment)."""
        values = {field.name: field.metadata["read"](env) for field in dataclasses.fields(cls)
                  if "read" in field.metadata}
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class ServiceConfig(Settings):
    """What every backend process needs: the database and the broker's REST API."""
    database_url: str = required("DATABASE_URL")
    emqx_api_url: str = required("FLEET_EMQX_API_URL")
    emqx_api_key: str = required("FLEET_EMQX_API_KEY")
    emqx_api_secret: str = secret("FLEET_EMQX_API_SECRET")
