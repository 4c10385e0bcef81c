"""The local state file of each vehicle: 0600, atomic, secrets never in repr."""
from __future__ import annotations

import json
import stat

import pytest

from simulator.credentials_store import CredentialsStore


def test_token_then_secret_lifecycle(tmp_path):
    store = CredentialsStore(tmp_path / "state")
    assert store.load("veh-1") is None
    store.store_token("veh-1", "fleet-a", "enr_token")
    loaded = store.load("veh-1")
    assert loaded.enrollment_token == "enr_token" and not loaded.registered and loaded.fleet_id == "fleet-a"

    store.store_secret("veh-1", None, "device-secret")
    loaded = store.load("veh-1")
    assert loaded.registered and loaded.password == "device-secret"
    assert loaded.enrollment_token is None, "a used token is forgotten"
    assert loaded.fleet_id == "fleet-a" and loaded.registered_at

    store.forget_secret("veh-1")
    assert not store.load("veh-1").registered


def test_files_are_private(tmp_path):
    store = CredentialsStore(tmp_path / "state")
    store.store_secret("veh-2", "f", "s3cret")
    path = store.path("veh-2")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text())["password"] == "s3cret"
    assert [p.name for p in path.parent.iterdir()] == ["veh-2.json"], "no temp files left behind"


def test_repr_never_shows_secrets(tmp_path):
    store = CredentialsStore(tmp_path)
    credentials = store.store_secret("veh-3", "f", "very-secret-value")
    assert "very-secret-value" not in repr(credentials)


def test_invalid_ids_and_corrupt_files_are_errors(tmp_path):
    store = CredentialsStore(tmp_path)
    with pytest.raises(ValueError):
        store.path("../etc/passwd")
    (tmp_path / "veh-4.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        store.load("veh-4")
