"""The Eclipse Paho MQTT 3.1.1 interoperability suite against the stand-in: all ten cases must pass.

The broker is the stand-in started as the embedded stack starts it (``python -m emqx.standin --config``) from
tests/interop/emqx-interop.conf — anonymous clients, and EMQX's ``file`` authorization source with
tests/interop/acl.conf, which refuses subscriptions to "test/nosubscribe" — on free ports given as EMQX_*
variables. The cases (paho_cases.py) run as one unittest suite in Paho's order, each result printed.
"""
from __future__ import annotations

import sys
import unittest
from pathlib import Path

from tests.interop import paho_cases
from tests.support.standin import StandinBroker

CONF = Path(__file__).parent / "emqx-interop.conf"


def test_paho_interoperability_suite_passes_all_ten_cases(tmp_path):
    broker = StandinBroker(tmp_path, conf_file=CONF).start()
    try:
        paho_cases.InteropTest.host, paho_cases.InteropTest.port = "127.0.0.1", broker.mqtt_port
        suite = unittest.defaultTestLoader.loadTestsFromTestCase(paho_cases.InteropTest)
        names = [test.id().rsplit(".", 1)[-1] for test in suite]
        result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    finally:
        code = broker.stop()
    problems = {test.id().rsplit(".", 1)[-1]: trace for test, trace in result.failures + result.errors}
    assert problems == {}, "\n".join(f"{name}:\n{trace}" for name, trace in problems.items())
    assert result.testsRun == len(paho_cases.CASES) == 10
    assert names == list(paho_cases.CASES)
    assert code == 0
