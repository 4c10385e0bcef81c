"""`fleetctl production-env` renders a .env for docker-compose.yml (every variable of .env.example, fresh secrets);
`fleetctl check-env` finds every value Compose, EMQX's HOCON, a database URL or EMQX's API key file would break."""
from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from emqx.standin.config import parse_env_value
from fleetcore import paths
from fleetctl import localsecrets, production


def parse_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def fleetctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetctl", *args], capture_output=True, text=True,
                          cwd=paths.PROJECT_ROOT, timeout=60)


@pytest.fixture(scope="module")
def generated() -> str:
    result = fleetctl("production-env")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_production_env_fills_every_placeholder_with_a_fresh_secret(generated):
    example = parse_env((paths.PROJECT_ROOT / ".env.example").read_text(encoding="utf-8"))
    rendered = parse_env(generated)
    assert set(rendered) == set(example)
    secrets = {key: value for key, value in rendered.items() if example[key].startswith("change-me")}
    assert secrets, ".env.example has no change-me placeholders"
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9]{42}", value) for value in secrets.values())
    assert len(set(secrets.values())) == len(secrets), "secrets repeat"
    assert {k: v for k, v in rendered.items() if k not in secrets} == {
        k: v for k, v in example.items() if k not in secrets}
    again = parse_env(fleetctl("production-env").stdout)
    assert all(again[key] != value for key, value in secrets.items()), "a second run must make new secrets"


def test_what_production_env_writes_passes_check_env(generated, tmp_path):
    env = tmp_path / ".env"
    env.write_text(generated)
    result = fleetctl("check-env", str(env))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{env}: ok\n", "")


def test_production_env_refuses_to_print_what_check_env_would_refuse(tmp_path, capsys, monkeypatch):
    """production-env checks its own output: a .env.example whose fixed value is unsafe makes it print nothing."""
    example = tmp_path / ".env.example"
    example.write_text((paths.PROJECT_ROOT / ".env.example").read_text().replace("FLEET_EMQX_API_KEY=fleet",
                                                                               "FLEET_EMQX_API_KEY=fleet:ops"))
    monkeypatch.setattr(production.paths, "PROJECT_ROOT", tmp_path)
    assert production.main() == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "production-env: FLEET_EMQX_API_KEY: contains ':': EMQX's API key file is one " \
                                "key:secret:role line, and the services send key:secret as HTTP Basic\n"


def test_generated_secrets_are_safe_everywhere_and_emqx_reads_them_unchanged():
    destinations = {d for uses in production.DESTINATIONS.values() for d in uses}
    for n in range(2000):
        secret = production.new_secret()
        for kind, where in destinations:
            assert production._CHECKS[kind](secret, where) is None, (kind, secret)
        if n < 100:                                      # the HOCON parser is slow; the alphabet is what matters
            assert parse_env_value(secret) == secret


def test_the_embedded_stack_generates_its_secrets_the_same_way(tmp_path):
    """Its ingest password and broker token reach the stand-in as EMQX_* values too: a token_urlsafe value starting
    with e.g. "9w" was read as a duration of 63 days there."""
    assert parse_env_value("9w-CShihKvcA") != "9w-CShihKvcA"
    values, created = localsecrets.load_or_create(tmp_path / "secrets.env")
    assert set(created) == set(localsecrets.SECRETS)
    for value in values.values():
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]{42}", value)
        assert parse_env_value(value) == value


@pytest.mark.parametrize("variable, value, reason", [
    ("EMQX_NODE_COOKIE", "Cookie#Q7x", "contains '#': EMQX reads EMQX_NODE__COOKIE as HOCON, where it starts a"),
    ("EMQX_DASHBOARD_PASSWORD", "Dash//Q7x", "contains '//': EMQX reads EMQX_DASHBOARD__DEFAULT_PASSWORD as HOCON"),
    ("FLEET_INGEST_DB_PASSWORD", 'Ing"Q7x', "contains '\"': EMQX reads EMQX_CONNECTORS__PGSQL__FLEET_DB__PASSWORD"),
    ("FLEET_INGEST_DB_PASSWORD", "Ing\\Q7x", "contains '\\\\': EMQX reads"),
    ("EMQX_NODE_COOKIE", "Cookie=Q7x", "contains '=': EMQX reads EMQX_NODE__COOKIE as HOCON"),
    ("EMQX_NODE_COOKIE", "0123Q7x", "starts with a digit"),
    ("FLEET_INGEST_DB_PASSWORD", "9w-CShihKvcA", "starts with a digit"),
    ("EMQX_DASHBOARD_PASSWORD", "Dash!Q7x", "is not a plain HOCON string"),
    ("FLEET_BROKER_TOKEN", 'Tok"Q7xxxxxxxxxxxxx', "ends the quoted HOCON string in EMQX_AUTHENTICATION__1__HEADERS"),
    ("FLEET_BROKER_TOKEN", "Tok\\Q7xxxxxxxxxxxxx", "starts an escape in the quoted HOCON string"),
    ("FLEET_DB_PASSWORD", "Db@Q7/x", "contains '/', '@': it is the password inside DATABASE_URL"),
    ("FLEET_PG_SUPERUSER_PASSWORD", "Pg#Q7x", "contains '#': it is the password inside FLEET_DB_ADMIN_URL"),
    ("FLEET_EMQX_API_SECRET", "Api:Q7xxxxxxxxxxxxx", "contains ':': EMQX's API key file is one key:secret:role line"),
    ("FLEET_EMQX_API_KEY", "fleet:ops", "contains ':'"),
    ("FLEET_JWT_SECRET", "Jwt$Q7x" + "x" * 32, "contains '$': Compose replaces $NAME"),
    ("FLEET_ADMIN_PASSWORD", "Admin Q7x #1", "contains ' #': Compose reads the rest as a comment"),
    ("FLEET_DEVICE_SECRET_KEY", " Dev" + "x" * 40, "has spaces around it"),
    ("FLEET_DEVICE_SECRET_KEY", "change-me-device-secret-key-at-least-32-characters", "still the placeholder"),
    ("FLEET_JWT_SECRET", "", "empty"),
])
def test_check_env_names_the_unsafe_variable_and_why_without_showing_it(generated, tmp_path, capsys, variable, value,
                                                                        reason):
    lines = [f"{variable}={value}" if line.startswith(f"{variable}=") else line for line in generated.splitlines()]
    env = tmp_path / ".env"
    env.write_text("\n".join(lines) + "\n")
    assert production.check_main(str(env)) == 1
    out, err = capsys.readouterr()
    problems = err.splitlines()
    assert out == "" and problems and all(line.startswith(f"{env}: {variable}: ") for line in problems), problems
    assert reason in problems[0]
    if len(value.strip()) > 4:
        assert value.strip() not in err, "check-env must never print a secret"


def test_check_env_on_the_command_line(generated, tmp_path):
    env = tmp_path / ".env"
    env.write_text("".join(line + "\n" for line in generated.splitlines() if not line.startswith("EMQX_NODE_COOKIE="))
                   + "not a variable\n")
    result = fleetctl("check-env", str(env))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [f"{env}: line {len(generated.splitlines())}: not NAME=value",
                                          f"{env}: EMQX_NODE_COOKIE: missing (docker-compose.yml needs it)"]
    absent = fleetctl("check-env", str(tmp_path / "absent.env"))
    assert (absent.returncode, absent.stderr) == (2, f"check-env: cannot read {tmp_path / 'absent.env'}: "
                                                     "No such file or directory\n")


@pytest.mark.parametrize("value, emqx_reads", [
    ("Cookie#Q7x", "Cookie"), ('"Cookie"', "Cookie"), ("Cookie=Q7x", {"Cookie": "Q7x"}),
    ("Cookie:Q7x", {"Cookie": "Q7x"}), ("123456", 123456), ("true", True),
])
def test_what_check_env_refuses_for_emqx_really_changes_when_parsed_as_emqx_does(value, emqx_reads):
    """The rules are not folklore: EMQX's env parsing (the stand-in's copy of hocon_tconf, docs/EMQX.md §2) changes
    these values. (`//` truncates as well in EMQX's scanner, which the stand-in's parser does not copy.)"""
    assert production._CHECKS["hocon"](value, "EMQX_NODE__COOKIE") is not None
    assert parse_env_value(value) == emqx_reads


def test_destinations_are_where_docker_compose_puts_each_variable():
    """DESTINATIONS, read off docker-compose.yml: EMQX_* values (inside a quoted HOCON string or not), the passwords
    inside postgresql:// URLs, and the `key:secret:role` line the emqx entrypoint writes."""
    compose = yaml.safe_load(Path(paths.PROJECT_ROOT / "docker-compose.yml").read_text())
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for service in compose["services"].values():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            for match in re.finditer(r"\$\{([A-Z0-9_]+)", value):
                before = value[:match.start()]
                if key.startswith("EMQX_"):
                    found[match.group(1)].add(("hocon-string" if before.count('"') % 2 else "hocon", key))
                elif before.startswith("postgresql://") and before.endswith(":") and "@" not in before:
                    found[match.group(1)].add(("url-password", key))
    entrypoint = " ".join(compose["services"]["emqx"]["entrypoint"])
    for name in re.findall(r'"\$\$([A-Z0-9_]+)"', entrypoint.split("api_keys.txt")[0]):
        found[name].add(("api-key-file", "EMQX's API key file"))
    assert dict(found) == {name: set(uses) for name, uses in production.DESTINATIONS.items()}
