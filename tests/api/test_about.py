"""The API root (api/about.py): ``GET /`` and ``GET /api/v1`` say what answers — name, version, the commit the
launcher read from git — and every link they give leads somewhere."""
from __future__ import annotations

import re
import subprocess
from importlib import metadata

from fleetcore import paths
from fleetctl import stack as stack_module


def test_the_root_names_the_service_its_version_commit_and_documentation(anonymous):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.PROJECT_ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    root = anonymous.get("/")
    assert root.status_code == 200 and root.headers["Content-Type"].startswith("application/json")
    body = root.json()
    assert body["name"] == "Fleet operator API" and body["api_version"] == "v1"
    assert body["version"] == metadata.version("fleet-backend")
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", body["commit"]) and body["commit"].startswith(head)
    assert anonymous.get("/api/v1").json() == body
    links = body["links"]
    for name in ("api", "docs", "openapi", "console", "health"):
        assert anonymous.get(links[name]).status_code == 200, (name, links[name])
    spec = anonymous.get(links["openapi"]).json()
    assert {"/", "/api/v1", links["token"]} <= set(spec["paths"])
    assert "swagger-ui" in anonymous.get(links["docs"]).text


def test_a_commit_given_in_the_environment_wins_over_git(monkeypatch):
    """A copy of the project without .git (or the Docker image's build argument) still reports its commit."""
    monkeypatch.setenv("FLEET_GIT_COMMIT", "0123abc")
    assert stack_module._git_commit() == "0123abc"
    monkeypatch.delenv("FLEET_GIT_COMMIT")
    assert stack_module._git_commit().startswith(
        subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.PROJECT_ROOT, capture_output=True, text=True,
                       check=True).stdout.strip())
