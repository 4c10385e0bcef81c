"""The Postman collection (postman/) passes against a freshly started embedded stack, run by newman exactly as the
README documents it: its newman line, with the environment the launcher wrote for the stack
(``var/postman.environment.json``; fleetctl/postman.py).

newman is installed on first use into var/node/newman (git-ignored, tests/support/npm.py) with npm, at the version
the README names; the test is skipped only when Node.js or npm itself is missing (and fails then under CI=true).
Every request of the collection must run and every assertion pass; without a password the run stops at its first
request with one failure.
"""
from __future__ import annotations

import json
import shlex
import stat
import subprocess

import pytest

from fleetcore import paths
from fleetctl import postman
from tests.support import readme
from tests.support.npm import npm_package
from tests.support.required import require_components

NEWMAN_VERSION = postman.NEWMAN_VERSION
COLLECTION = postman.COLLECTION
ENVIRONMENT = postman.TEMPLATE
NPX_NEWMAN = f"npx --yes newman@{NEWMAN_VERSION}"


def newman_binary() -> str:
    return str(npm_package("newman", NEWMAN_VERSION, "newman runs on Node.js") / ".bin" / "newman")


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


def documented_newman_argv(environment: str) -> list[str]:
    """The README's newman command (the one the guide shows and ``make run`` prints), for the local newman and
    ``environment`` instead of ``var/postman.environment.json``."""
    [line] = [c.text for c in readme.guide_commands() if c.text.startswith(NPX_NEWMAN)]
    assert line == postman.newman_command("var/postman.environment.json")
    argv = shlex.split(line.replace("var/postman.environment.json", environment))
    return [newman_binary(), *argv[len(shlex.split(NPX_NEWMAN)):]]


@pytest.fixture
def postman_environment(stack):
    """The environment the launcher wrote for this stack: its api URL and admin password, private to its owner."""
    require_components(stack, "api")
    path = stack.postman_environment
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "it holds the admin password"
    values = {v["key"]: v["value"] for v in json.loads(path.read_text(encoding="utf-8"))["values"]}
    assert values["baseUrl"] == stack.url("api") and values["password"] == stack.secrets["FLEET_ADMIN_PASSWORD"]
    return path


def run_newman(environment, tmp_path) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "newman-report.json"
    argv = [*documented_newman_argv(str(environment)), "--reporters", "cli,json", "--reporter-json-export",
            str(report), "--timeout-request", "30000", "--color", "off", "--disable-unicode"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=paths.PROJECT_ROOT)
    assert report.exists(), f"newman did not run:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result, json.loads(report.read_text(encoding="utf-8"))["run"]


def failures_of(run: dict) -> list[str]:
    return [f"{f['source'].get('name', '?')}: {f['error'].get('test') or ''} — {f['error'].get('message')}"
            for f in run["failures"]]


def test_postman_collection_passes_with_newman(postman_environment, tmp_path):
    result, run = run_newman(postman_environment, tmp_path)
    assert failures_of(run) == [], "Postman assertions failed:\n" + "\n".join(failures_of(run))
    assert result.returncode == 0, result.stdout[-5000:]
    executed = [execution["item"]["name"] for execution in run["executions"]]
    expected = collection_requests(json.loads(COLLECTION.read_text(encoding="utf-8"))["item"])
    assert executed == expected, "some requests did not run"
    assert run["stats"]["assertions"]["total"] >= 2 * len(expected)


def test_without_a_password_the_run_stops_with_one_clear_failure(stack, postman_environment, tmp_path):
    """The template in postman/ has no password: one failure that says what to do, not a cascade."""
    env = postman.environment(base_url=stack.url("api"), password="")
    path = tmp_path / "no-password.json"
    path.write_text(json.dumps(env), encoding="utf-8")
    result, run = run_newman(path, tmp_path)
    assert result.returncode != 0
    assert [e["item"]["name"] for e in run["executions"]] == ["Health"], "nothing after the first request"
    [failure] = failures_of(run)
    assert "var/postman.environment.json" in failure and "no password set" in failure


def test_the_collection_never_sends_a_fleet_wide_emergency_stop():
    """Run against a real deployment, a fleet-wide stop would stop every vehicle: only refused calls are allowed."""
    collection = json.loads(COLLECTION.read_text(encoding="utf-8"))

    def walk(items):
        for item in items:
            yield from walk(item["item"]) if "item" in item else [item]
    fleet_wide = [item for item in walk(collection["item"])
                  if item["request"]["url"]["raw"].endswith(("/api/v1/emergency-stop", "/api/v1/emergency-release"))]
    assert fleet_wide, "the refusals are part of the collection"
    for item in fleet_wide:
        body = json.loads(item["request"].get("body", {}).get("raw") or "{}")
        as_viewer = "viewerToken" in json.dumps(item["request"].get("auth", {}))
        assert item["request"]["url"]["raw"].endswith("/emergency-stop") and (as_viewer or "reason" not in body), \
            f"{item['name']} could stop every vehicle of a deployment"
