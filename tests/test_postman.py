"""The Postman collection (postman/) passes against a freshly started embedded stack, run by newman.

newman is installed on first use into var/node (git-ignored) with npm, at the pinned version below; the test is
skipped only when Node.js or npm itself is missing (and fails then under CI=true). Every request of the collection
must run and every assertion pass.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from fleetcore import paths
from tests.support.required import require_components, require_tool

NEWMAN_VERSION = "6.2.2"
COLLECTION = paths.PROJECT_ROOT / "postman" / "fleet-backend.postman_collection.json"
ENVIRONMENT = paths.PROJECT_ROOT / "postman" / "embedded.postman_environment.json"
NODE_DIR = paths.PROJECT_ROOT / "var" / "node"


def newman_binary() -> str:
    binary = NODE_DIR / "node_modules" / ".bin" / "newman"
    version_file = NODE_DIR / "node_modules" / "newman" / "package.json"
    if binary.exists() and json.loads(version_file.read_text())["version"] == NEWMAN_VERSION:
        return str(binary)
    require_tool("node", "newman runs on Node.js")
    npm = require_tool("npm", "newman is installed with npm")
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
                             "--loglevel=error", f"newman@{NEWMAN_VERSION}"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"npm install newman@{NEWMAN_VERSION} failed:\n{result.stderr[-3000:]}"
    return str(binary)


def collection_requests(items: list[dict]) -> list[str]:
    names = []
    for item in items:
        names += collection_requests(item["item"]) if "item" in item else [item["name"]]
    return names


def test_every_request_has_tests():
    collection = json.loads(COLLECTION.read_text(encoding="utf-8"))

    def walk(items):
        for item in items:
            if "item" in item:
                yield from walk(item["item"])
            else:
                yield item
    for item in walk(collection["item"]):
        scripts = [e for e in item.get("event", []) if e["listen"] == "test"]
        assert scripts and any("pm.test(" in line for line in scripts[0]["script"]["exec"]), item["name"]


@pytest.fixture
def postman_environment(stack, tmp_path):
    """The embedded environment with this stack's URL and admin password (written to a private temp file)."""
    require_components(stack, "api")
    running = {component.name for component in stack.started}
    env = json.loads(ENVIRONMENT.read_text(encoding="utf-8"))
    values = {"baseUrl": stack.url("api"), "username": "admin", "password": stack.secrets["FLEET_ADMIN_PASSWORD"],
              "brokerAvailable": "true" if "broker" in running else "false"}
    for entry in env["values"]:
        if entry["key"] in values:
            entry["value"] = values.pop(entry["key"])
    assert not values, f"postman environment lacks {sorted(values)}"
    path = tmp_path / "environment.json"
    path.write_text(json.dumps(env), encoding="utf-8")
    path.chmod(0o600)
    return path


def test_postman_collection_passes_with_newman(postman_environment, tmp_path):
    newman = newman_binary()
    report = tmp_path / "newman-report.json"
    result = subprocess.run(
        [newman, "run", str(COLLECTION), "--environment", str(postman_environment), "--reporters", "cli,json",
         "--reporter-json-export", str(report), "--timeout-request", "30000", "--color", "off",
         "--disable-unicode"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert report.exists(), f"newman did not run:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    run = json.loads(report.read_text(encoding="utf-8"))["run"]
    failures = [f"{f['source'].get('name', '?')}: {f['error'].get('test') or ''} — {f['error'].get('message')}"
                for f in run["failures"]]
    assert failures == [], "Postman assertions failed:\n" + "\n".join(failures)
    assert result.returncode == 0, result.stdout[-5000:]
    executed = [execution["item"]["name"] for execution in run["executions"]]
    expected = collection_requests(json.loads(COLLECTION.read_text(encoding="utf-8"))["item"])
    assert executed == expected, "some requests did not run"
    assert run["stats"]["assertions"]["total"] >= 2 * len(expected)
