"""npm packages the tests run, installed on first use into var/node/<package> (git-ignored) with npm, at the exact
version the test names (newman for tests/test_postman.py, vda-5050-lib for tests/vda5050). Without Node.js or npm
the test is skipped locally and fails under CI=true (tests/support/required.py).

Parallel test workers (pytest-xdist) may need the same package at once: an exclusive lock on var/node/.lock makes
one of them install it while the others wait, then find it installed."""
from __future__ import annotations

import fcntl
import json
import subprocess
from pathlib import Path

from fleetcore import paths
from tests.support.required import require_tool

NODE_ROOT = paths.PROJECT_ROOT / "var" / "node"


def _installed(modules: Path, name: str, version: str) -> bool:
    package_json = modules / name / "package.json"
    return package_json.exists() and json.loads(package_json.read_text())["version"] == version


def npm_package(name: str, version: str, purpose: str) -> Path:
    """The node_modules directory holding ``name@version`` (and its dependencies), installed if missing."""
    prefix = NODE_ROOT / name
    modules = prefix / "node_modules"
    require_tool("node", purpose)
    if _installed(modules, name, version):
        return modules
    npm = require_tool("npm", f"{name} is installed with npm")
    prefix.mkdir(parents=True, exist_ok=True)
    with open(NODE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file is closed
        if _installed(modules, name, version):  # another worker installed it while this one waited
            return modules
        result = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                                 "--loglevel=error", "--save-exact", f"{name}@{version}"],
                                capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"npm install {name}@{version} failed:\n{result.stderr[-3000:]}"
    return modules
