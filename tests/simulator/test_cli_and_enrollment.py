"""Command line, enrollment CSV and fault options: what a user types and what the simulator makes of it."""
from __future__ import annotations

import json

import pytest

from simulator import cli
from simulator.arguments import UsageError, resolve_backend
from simulator.credentials_store import CredentialsStore
from simulator.enrollment import load_csv_tokens, read_enrollment_csv
from simulator.faults import EXPECTED_REASON, MALFORMED_KINDS, FaultConfig, malformed_payload
from simulator.vehicle import BrokerAddress


def parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


def test_defaults_match_the_embedded_stack(tmp_path, monkeypatch):
    """Without a running stack or FLEET_PORT_*: the default ports (tests/test_stack_discovery.py has the rest)."""
    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("FLEET_PORT_API", raising=False)
    monkeypatch.delenv("FLEET_PORT_MQTT", raising=False)
    args = parse("run")
    assert args.api is None and args.broker is None, "resolved when the command runs, not when it is parsed"
    resolve_backend(args)
    assert args.api == "http://127.0.0.1:8080" and args.broker == "mqtt://127.0.0.1:1883"
    assert args.vehicles is None and args.time_scale == 1.0 and args.rate == 1.0 and not args.takeover
    assert args.transport == "auto", "the HTTP fallback is on by default (docs/PROTOCOL.md → HTTP fallback)"
    assert cli.fault_config(args).active == []


def test_every_fault_option_reaches_the_fault_config():
    args = parse("run", "--fault-drop-every", "30", "--fault-malformed", "0.1", "--fault-clock-skew", "-300",
                 "--fault-spoof", "0.2", "--fault-duplicate", "0.3", "--fault-out-of-order", "0.4",
                 "--fault-reject-missions", "--fault-fail-missions", "50")
    faults = cli.fault_config(args)
    assert faults == FaultConfig(drop_every_s=30, malformed_rate=0.1, clock_skew_s=-300, spoof_rate=0.2,
                                 duplicate_rate=0.3, out_of_order_rate=0.4, reject_missions=True,
                                 fail_missions_at=50)


@pytest.mark.parametrize("argv", [("run", "--fault-malformed", "1.5"), ("run", "--time-scale", "0"),
                                  ("run", "--home", "north"), ("scenario", "nope"), ("run", "--transport", "smtp")])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2


def test_broker_urls():
    assert BrokerAddress.parse("mqtt://127.0.0.1:1883") == BrokerAddress("127.0.0.1", 1883, False)
    assert BrokerAddress.parse("mqtts://broker.example:8884", "ca.pem") == BrokerAddress(
        "broker.example", 8884, True, "ca.pem")
    assert BrokerAddress.parse("mqtts://h").port == 8883 and BrokerAddress.parse("h").port == 1883
    with pytest.raises(ValueError):
        BrokerAddress.parse("http://h:80")


def test_vehicle_ids_from_prefix_and_count(tmp_path):
    store = CredentialsStore(tmp_path)
    args = parse("run", "--vehicles", "3", "--fleet", "depot-7")
    assert cli.vehicle_ids(args, store) == ["depot-7-0001", "depot-7-0002", "depot-7-0003"]
    args = parse("run", "--vehicles", "2", "--prefix", "bad/")
    with pytest.raises(UsageError):
        cli.vehicle_ids(args, store)


def test_run_without_any_credentials_explains_what_to_do(tmp_path, capsys):
    code = cli.main(["run", "--vehicles", "2", "--state-dir", str(tmp_path), "--plain"])
    assert code == 2
    assert "--user/--password or --enrollment-csv" in capsys.readouterr().err


def test_transport_http_with_a_certificate_identity_is_refused(tmp_path, capsys):
    code = cli.main(["run", "--vehicles", "1", "--state-dir", str(tmp_path), "--plain", "--transport", "http",
                     "--mtls-broker", "mqtts://127.0.0.1:8884", "--broker", "mqtt://127.0.0.1:1883",
                     "--api", "http://127.0.0.1:8080"])
    assert code == 2
    assert "--transport http cannot be used with --mtls-broker" in capsys.readouterr().err


def write_csv(path, rows, header="vehicle_id,fleet_id,enrollment_token,expires_at"):
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def test_enrollment_csv_tokens_go_to_the_state_files(tmp_path):
    csv_file = write_csv(tmp_path / "v.csv", [("veh-a", "f1", "enr_a", "2030-01-01T00:00:00Z"),
                                              ("veh-b", "f1", "enr_b", "2030-01-01T00:00:00Z")])
    store = CredentialsStore(tmp_path / "state")
    store.store_secret("veh-b", "f1", "already-registered")
    rows = read_enrollment_csv(csv_file)
    assert [r.vehicle_id for r in rows] == ["veh-a", "veh-b"]
    assert load_csv_tokens(store, rows) == 1
    assert store.load("veh-a").enrollment_token == "enr_a"
    assert store.load("veh-b").password == "already-registered", "a registered vehicle keeps its secret"
    args = parse("run", "--enrollment-csv", str(csv_file), "--vehicles", "1", "--state-dir", str(tmp_path / "s2"))
    assert cli.vehicle_ids(args, CredentialsStore(tmp_path / "s2")) == ["veh-a"]


@pytest.mark.parametrize("header, rows", [
    ("id,token", [("veh-a", "enr")]),
    ("vehicle_id,fleet_id,enrollment_token,expires_at", [("bad/id", "f", "enr", "x")]),
    ("vehicle_id,fleet_id,enrollment_token,expires_at", [("veh-a", "f", "", "x")]),
])
def test_malformed_csv_is_refused_with_the_line(tmp_path, header, rows):
    with pytest.raises(ValueError):
        read_enrollment_csv(write_csv(tmp_path / "bad.csv", rows, header))


def test_malformed_payloads_are_each_wrong_in_their_own_way():
    good = {"v": 1, "msg_id": "m", "seq": 1, "ts": 1, "data": {"lat": 1.0, "lon": 2.0}}
    assert set(MALFORMED_KINDS) == set(EXPECTED_REASON)
    payloads = {kind: malformed_payload(kind, good) for kind in MALFORMED_KINDS}
    with pytest.raises(ValueError):
        json.loads(payloads["not_json"])
    payloads["not_json"].decode("utf-8")  # still valid UTF-8: the reason must be not_json, not not_utf8
    assert isinstance(json.loads(payloads["not_object"]), list)
    assert "lat" not in json.loads(payloads["missing_field"])["data"]
    assert isinstance(json.loads(payloads["wrong_type"])["data"]["lat"], str)
    assert json.loads(payloads["bad_version"])["v"] == 99
    assert good["data"]["lat"] == 1.0, "the good message is not modified"


def test_fault_config_validates():
    with pytest.raises(ValueError):
        FaultConfig(spoof_rate=2)
    with pytest.raises(ValueError):
        FaultConfig(fail_missions_at=100)


def test_the_live_view_and_the_plain_line_render_a_snapshot():
    from rich.console import Console

    from simulator import display
    from simulator.fleet import Snapshot
    before = Snapshot(at=1.0, vehicles=3, states={"online": 2, "failed": 1}, sent={"telemetry": 10}, missions={},
                      active_missions=0, commands=0, duplicate_commands=0, bad_commands=0, registered=3,
                      register_rejected=0, connects=2, disconnects=0, refused=0, publish_errors=0,
                      subscribe_denied=0, buffered=0, buffer_dropped=0, faults={}, loop_errors=0,
                      failures={"registration rejected: token_used": 1})
    now = Snapshot(**{**before.__dict__, "at": 3.0, "sent": {"telemetry": 30, "status": 2},
                      "faults": {"duplicate": 4}, "missions": {"completed": 1}})
    assert display.rate(now, before) == pytest.approx(11.0)
    console = Console(record=True, width=140)
    console.print(display.render(now, before, "fleet-sim test"))
    text = console.export_text()
    for expected in ("online", "msg/s out", "completed", "duplicate=4", "token_used", "Ctrl-C"):
        assert expected in text
    display.log_snapshot(now, before)


def test_log_lines_go_through_the_live_display_while_it_runs(capsys):
    """Printed beside a live table, a log line lands inside it and the next refresh repeats the table's header."""
    import io
    import logging

    from rich.console import Console
    from rich.live import Live

    from fleetcore import logs
    from simulator import display
    logs.configure("simulator", level="INFO")
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with Live("the table", console=console, auto_refresh=False) as live, display.logs_above(live):
        logging.getLogger("simulator.vehicle").warning("link lost", extra={"event": "vehicle.disconnected"})
    assert "event=vehicle.disconnected" in screen.getvalue()
    assert "vehicle.disconnected" not in capsys.readouterr().err, "not written past the display"
    logging.getLogger("simulator.vehicle").warning("after", extra={"event": "vehicle.after"})
    assert "event=vehicle.after" in capsys.readouterr().err, "stderr again once the display is gone"
