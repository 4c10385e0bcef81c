"""The Postman/newman environment of a running embedded stack (``var/postman.environment.json``).

Written by the launcher at every start from the template in ``postman/`` (the one list of variables the
collection reads), with the stack's real api URL and the initial admin password. The password makes the file a
secret like ``var/secrets.env``: it is created with mode 0600 and never printed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from fleetcore import paths

TEMPLATE = paths.PROJECT_ROOT / "postman" / "embedded.postman_environment.json"
COLLECTION = paths.PROJECT_ROOT / "postman" / "fleet-backend.postman_collection.json"
NEWMAN_VERSION = "6.2.2"     # the version the tests run (tests/test_postman.py) and the README names


def newman_command(environment_path: str) -> str:
    """The one-line newman run the README documents and ``make run`` prints."""
    return (f"npx --yes newman@{NEWMAN_VERSION} run postman/{COLLECTION.name} "
            f"--environment {environment_path}")


def environment(*, base_url: str, password: str, username: str = "admin", broker_available: bool = True) -> dict:
    """The template with this stack's values filled in; KeyError names a variable the template lacks."""
    env = json.loads(TEMPLATE.read_text(encoding="utf-8"))
    values = {"baseUrl": base_url, "username": username, "password": password,
              "brokerAvailable": "true" if broker_available else "false"}
    for entry in env["values"]:
        if entry["key"] in values:
            entry["value"] = values.pop(entry["key"])
    if values:
        raise KeyError(f"{TEMPLATE} lacks the variables {sorted(values)}")
    return env


def write_environment(path: Path, **values) -> Path:
    """Write the environment to ``path`` with mode 0600 (atomically: never a readable half-written secret)."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(environment(**values), handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)
    return path
