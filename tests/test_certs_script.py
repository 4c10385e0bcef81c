"""scripts/make-certs.sh makes a CA, a broker certificate for the names given and client certificates."""
from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.required import require_tool

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make-certs.sh"


@pytest.fixture(autouse=True)
def _needs_openssl():
    require_tool("openssl", "scripts/make-certs.sh runs it")


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
