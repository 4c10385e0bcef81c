"""`fleetctl production-env` renders a .env for docker-compose.yml: every variable of .env.example, fresh secrets."""
from __future__ import annotations

import subprocess
import sys

from fleetcore import paths


def parse_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_production_env_fills_every_placeholder_with_a_fresh_secret():
    example = parse_env((paths.PROJECT_ROOT / ".env.example").read_text(encoding="utf-8"))
    result = subprocess.run([sys.executable, "-m", "fleetctl", "production-env"], capture_output=True, text=True,
                            cwd=paths.PROJECT_ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = parse_env(result.stdout)
    assert set(rendered) == set(example)
    secrets = {key: value for key, value in rendered.items() if example[key].startswith("change-me")}
    assert secrets, ".env.example has no change-me placeholders"
    assert all(len(value) >= 32 for value in secrets.values())
    assert len(set(secrets.values())) == len(secrets), "secrets repeat"
    assert {k: v for k, v in rendered.items() if k not in secrets} == {
        k: v for k, v in example.items() if k not in secrets}
    again = parse_env(subprocess.run([sys.executable, "-m", "fleetctl", "production-env"], capture_output=True,
                                     text=True, cwd=paths.PROJECT_ROOT, timeout=60).stdout)
    assert all(again[key] != value for key, value in secrets.items()), "a second run must make new secrets"
