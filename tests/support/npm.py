"""npm packages the tests run, installed on first use into var/node/<package> (git-ignored) with npm, at the exact
version the test names — the way tests/test_postman.py installs newman. Without Node.js or npm the test is
skipped locally and fails under CI=true (tests/support/required.py)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from fleetcore import paths
from tests.support.required import require_tool

NODE_ROOT = paths.PROJECT_ROOT / "var" / "node"


def npm_package(name: str, version: str, purpose: str) -> Path:
    """The node_modules directory holding ``name@version`` (and its dependencies), installed if missing."""
    prefix = NODE_ROOT / name
    modules = prefix / "node_modules"
    package_json = modules / name / "package.json"
    require_tool("node", purpose)
    if package_json.exists() and json.loads(package_json.read_text())["version"] == version:
        return modules
    npm = require_tool("npm", f"{name} is installed with npm")
    prefix.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error",
                             "--save-exact", f"{name}@{version}"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"npm install {name}@{version} failed:\n{result.stderr[-3000:]}"
    return modules
