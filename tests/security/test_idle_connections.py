"""Connections that never get as far as MQTT cost nothing for long: 3,000 plain TCP connections that never send
CONNECT and 1,000 TLS connections that never start their handshake are closed by the broker (``mqtt.idle_timeout``,
``ssl_options.handshake_timeout``), and the broker's memory returns to where it was — an idle TLS connection holds
256 KiB (asyncio's TLS read buffer), which glibc kept after the connections had gone (emqx/standin/memory.py)."""
from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.reliability import record
from tests.support.standin import StandinBroker, make_certs
from tests.support.waiting import wait_until

PLAIN, TLS = 3000, 1000
# what may stay behind after the wave, against a peak of about +300 MB: Python's own arenas and caches
SLACK_MB = 16


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("standin-idle")
    env = {"EMQX_MQTT__IDLE_TIMEOUT": "1s", "EMQX_LISTENERS__SSL__DEFAULT__SSL_OPTIONS__HANDSHAKE_TIMEOUT": "1s",
           "EMQX_LISTENERS__TCP__DEFAULT__MAX_CONNECTIONS": "10000"}
    instance = StandinBroker(workdir, certs=make_certs(workdir / "certs"), env=env).start()
    yield instance
    assert instance.stop() == 0


def _open(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]


def _wait_all_closed_by_broker(socks: list[socket.socket], timeout: float,
                               sample: Callable[[], object] = lambda: None) -> None:
    """Every socket reads EOF (or a reset): the broker closed it. Fails naming how many are still open.
    ``sample`` runs at every wake-up (to follow the broker's memory while it holds them)."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    open_count = len(socks)
    deadline = time.monotonic() + timeout
    try:
        while open_count and (remaining := deadline - time.monotonic()) > 0:
            sample()
            for key, _ in selector.select(min(remaining, 0.2)):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:
                    selector.unregister(sock)
                    open_count -= 1
        assert open_count == 0, f"{open_count} of {len(socks)} idle connections still open after {timeout} s"
    finally:
        selector.close()
        for sock in socks:
            sock.close()


def test_idle_plain_and_tls_connections_are_closed_and_their_memory_returned(broker):
    pid = broker.process.popen.pid
    # a first small wave warms up what every connection touches once (code paths, asyncio's structures)
    _wait_all_closed_by_broker(_open(broker.mqtt_port, 150) + _open(broker.tls_port, 150), 30)
    wait_until(lambda: broker.log_events("memory.trimmed"), 10, message="no trim after the warm-up wave")
    baseline = rss_mb(pid)

    socks = _open(broker.mqtt_port, PLAIN) + _open(broker.tls_port, TLS)
    samples = [rss_mb(pid)]
    _wait_all_closed_by_broker(socks, 60, sample=lambda: samples.append(rss_mb(pid)))
    peak = max(samples)
    after = wait_until(lambda: (mb := rss_mb(pid)) <= baseline + SLACK_MB and mb, 15,
                       message=lambda: f"RSS {rss_mb(pid):.0f} MB did not return near {baseline:.0f} MB "
                                       f"(peak {peak:.0f} MB)")
    record("security", "idle connections that never send CONNECT / never start TLS (3,000 TCP + 1,000 TLS)",
           connections=PLAIN + TLS, closed_by_broker=PLAIN + TLS, rss_baseline_mb=round(baseline),
           rss_peak_mb=round(peak), rss_after_mb=round(after))
