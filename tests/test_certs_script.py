"""scripts/make-certs.sh makes a CA, a broker certificate for the names given and client certificates, and with
BROKER_UID leaves a server key that the broker's uid — and only it — can read, whoever runs the script.

The runs as another user use ``setpriv`` with a numeric uid that has no account: nothing is added to the system.
They need root; CI runs as root, and there a missing tool or privilege fails the test instead of skipping it.
"""
from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.required import missing, require_tool

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make-certs.sh"

BROKER_UID = 1000                      # the EMQX image runs as uid 1000


@pytest.fixture(autouse=True)
def _openssl():
    require_tool("openssl", "scripts/make-certs.sh runs it")


@pytest.fixture
def as_root():
    require_tool("setpriv", "the runs as another user")
    if os.geteuid() != 0:
        missing("running the script as another user needs root")


@pytest.fixture
def shared_dir():
    """A directory every uid may pass through, as a checkout is (pytest's own temp root is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="fleet-certs-"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base)


def unused_uid(start: int) -> int:
    """A uid without an account (so the test changes nothing on the machine)."""
    uid = start
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def as_uid(uid: int, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv],
                          capture_output=True, text=True, **kwargs)


def can_read(uid: int, path: Path) -> bool:
    return as_uid(uid, [shutil.which("cat"), str(path)]).returncode == 0


def make_certs(out_dir: Path, *, uid: int | None = None, path: str = "/usr/bin:/bin") -> subprocess.CompletedProcess:
    env = {"PATH": path, "HOME": str(out_dir.parent), "BROKER_UID": str(BROKER_UID)}
    argv = [shutil.which("sh"), str(SCRIPT), str(out_dir)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True) if uid is None else as_uid(uid, argv, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_certificates_chain_to_the_ca_and_name_the_broker(tmp_path):
    subprocess.run([str(SCRIPT), str(tmp_path), "broker.example.com", "10.9.8.7"], check=True,
                   env={"PATH": "/usr/bin:/bin", "CLIENTS": "veh-1"}, capture_output=True)
    for name in ("server.pem", "veh-1.pem"):
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / name)],
                                capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    san = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "server.pem"), "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True, check=True).stdout
    for expected in ("DNS:localhost", "DNS:emqx", "IP Address:127.0.0.1", "DNS:broker.example.com",
                     "IP Address:10.9.8.7"):
        assert expected in san
    for key in ("ca.key", "server.key", "veh-1.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600, key


def test_running_again_keeps_existing_certificates(tmp_path):
    subprocess.run([str(SCRIPT), str(tmp_path)], check=True, capture_output=True)
    before = (tmp_path / "server.pem").read_bytes()
    subprocess.run([str(SCRIPT), str(tmp_path)], check=True, capture_output=True)
    assert (tmp_path / "server.pem").read_bytes() == before


def test_run_as_root_the_key_goes_to_the_broker_uid_alone(as_root, shared_dir):
    certs = shared_dir / "certs"
    done = make_certs(certs)
    key = certs / "server.key"
    assert (key.stat().st_uid, stat.S_IMODE(key.stat().st_mode)) == (BROKER_UID, 0o600)
    assert can_read(BROKER_UID, key)
    assert not can_read(unused_uid(BROKER_UID + 1), key)
    assert not can_read(BROKER_UID, certs / "ca.key")
    assert "WARNING" not in done.stderr
    make_certs(certs)                                   # a second run keeps it that way
    assert can_read(BROKER_UID, key) and stat.S_IMODE(key.stat().st_mode) == 0o600


def test_run_as_the_broker_uid_the_key_stays_private(as_root, shared_dir):
    os.chown(shared_dir, BROKER_UID, BROKER_UID)
    certs = shared_dir / "certs"
    make_certs(certs, uid=BROKER_UID)
    key = certs / "server.key"
    assert (key.stat().st_uid, stat.S_IMODE(key.stat().st_mode)) == (BROKER_UID, 0o600)
    assert not can_read(unused_uid(BROKER_UID + 1), key)


def test_run_as_another_user_the_broker_uid_can_read_the_key(as_root, shared_dir):
    """Not root and not uid 1000: an ACL for the broker's uid where setfacl exists, else a readable key + warning."""
    user = unused_uid(23000)
    os.chown(shared_dir, user, user)
    certs = shared_dir / "certs"
    done = make_certs(certs, uid=user)
    key = certs / "server.key"
    assert key.stat().st_uid == user
    assert can_read(BROKER_UID, key) and can_read(user, key)
    assert not can_read(BROKER_UID, certs / "ca.key")
    if shutil.which("setfacl"):
        assert "with an ACL" in done.stdout and "WARNING" not in done.stderr
        assert not can_read(unused_uid(user + 1), key)
    else:
        assert "readable by every local user" in done.stderr


def test_without_acls_another_user_gets_a_readable_key_and_a_warning(as_root, shared_dir):
    user = unused_uid(24000)
    os.chown(shared_dir, user, user)
    tools = shared_dir / "bin"                           # what the script needs, but no setfacl
    tools.mkdir(mode=0o755)
    for tool in ("mkdir", "openssl", "rm", "chmod", "chown", "id"):
        (tools / tool).symlink_to(shutil.which(tool))
    certs = shared_dir / "certs"
    done = make_certs(certs, uid=user, path=str(tools))
    key = certs / "server.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o644
    assert can_read(BROKER_UID, key)
    assert "WARNING" in done.stderr and f"sudo chown {BROKER_UID} '{key}'" in done.stderr
    assert stat.S_IMODE((certs / "ca.key").stat().st_mode) == 0o600
