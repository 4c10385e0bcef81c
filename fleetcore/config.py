"""Reading settings from the environment.

Every service is configured by environment variables only (twelve-factor); nothing secret has a default.
A secret may also be given as a file path in ``<NAME>_FILE`` (Docker/Kubernetes secrets).
"""
from __future__ import annotations

import os
from collections.abc import Mapping


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
