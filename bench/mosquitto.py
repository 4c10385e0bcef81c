"""mosquitto for the baselines: the Debian package, installed by the bench set-up when missing (root + apt), run
on a free loopback port with ``max_queued_messages 0`` (its default of 1000 drops QoS 1 messages it has
already acknowledged once a subscriber falls behind, which would make a baseline look faster by losing data)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto")


def find_binary() -> str | None:
    for candidate in CANDIDATES:
        found = shutil.which(candidate) or (candidate if os.path.isfile(candidate) else None)
        if found:
            return found
    return None


def ensure_installed(log=print) -> tuple[str | None, str]:
    """Returns (binary, note). Installs Debian's mosquitto when running as root with apt; else explains why not."""
    binary = find_binary()
    if binary:
        return binary, "found"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "mosquitto is not installed and this user cannot apt-get install it"
    log("installing Debian's mosquitto for the baselines (apt-get install -y mosquitto)")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "install", "-y", "-q", "mosquitto"],
                    ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "mosquitto"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode == 0 and find_binary():
            break
    binary = find_binary()
    return binary, ("installed with apt-get" if binary else "apt-get install mosquitto failed")


def version(binary: str) -> str:
    done = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].strip() if first else "unknown"


class Mosquitto:
    """A private mosquitto on 127.0.0.1:port; stopped by PID."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary, self.port = binary, port
        self.dir = Path(tempfile.mkdtemp(prefix="bench-mosquitto-"))
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Mosquitto:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "max_queued_messages 0\nmax_inflight_messages 0\nlog_dest stderr\nlog_type error\n")
        os.chmod(self.dir, 0o755)  # noqa: S103 - mosquitto may run as another user and must read its config
        os.chmod(conf, 0o644)
        self.process = subprocess.Popen([self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            try:
                probe.connect("127.0.0.1", self.port)
                probe.disconnect()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start: " + (self.process.stderr.read(2000) or b"").decode())

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
