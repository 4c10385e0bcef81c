"""Where the project's files are: SQL in ``sql/``, the broker config in ``emqx/``, local state in ``var/``."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("FLEET_PROJECT_ROOT") or Path(__file__).resolve().parents[1])


def sql_dir() -> Path:
    """Directory with the numbered migrations; the code files (functions, triggers, views) are in its ``code/``."""
    return Path(os.environ.get("FLEET_SQL_DIR") or PROJECT_ROOT / "sql")


def emqx_conf() -> Path:
    """The one broker configuration, read by EMQX in production and by the stand-in here."""
    return Path(os.environ.get("FLEET_EMQX_CONF") or PROJECT_ROOT / "emqx" / "emqx.conf")


def state_dir() -> Path:
    """Project-local, git-ignored state of the embedded stack (database files, secrets, logs)."""
    return Path(os.environ.get("FLEET_STATE_DIR") or PROJECT_ROOT / "var")
