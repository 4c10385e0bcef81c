"""docs/PROTOCOL.md, docs/schemas and docs/examples agree with each other and with the code.

* every schema is valid JSON Schema 2020-12 and every example validates against its schema (an example's schema
  is named by the file name up to the first dot: ``mission-event.progress.json`` → ``mission-event``);
* every JSON block in PROTOCOL.md that names a schema (```` ```json schema=telemetry ````) validates, and every
  example file is shown in PROTOCOL.md under its schema, so the document and the files cannot drift;
* the topic table lists exactly the kinds of ``fleetcore.topics.Kind``, the command table exactly
  ``fleetcore.envelope.COMMAND_TYPES``;
* what the backend really builds (``envelope.command``, the dispatcher's ``mission.dispatch``) validates too.
"""
from __future__ import annotations

import copy
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from fleetcore import envelope, topics

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCHEMAS = DOCS / "schemas"
EXAMPLES = DOCS / "examples"
PROTOCOL = DOCS / "PROTOCOL.md"

_BLOCK = re.compile(r"^```json schema=([a-z0-9-]+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def schema_name(path: Path) -> str:
    return path.name.split(".")[0]


def load_schemas() -> dict[str, dict]:
    return {schema_name(path): json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(SCHEMAS.glob("*.schema.json"))}


SCHEMA_DOCS = load_schemas()
REGISTRY = Registry().with_resources(
    (doc["$id"], Resource.from_contents(doc)) for doc in SCHEMA_DOCS.values())
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(SCHEMA_DOCS[name], registry=REGISTRY,
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(name: str, document) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator(name).iter_errors(document)]


def protocol_blocks() -> list[tuple[str, str]]:
    return _BLOCK.findall(PROTOCOL.read_text(encoding="utf-8"))


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The body rows of the first table under the first heading that contains ``heading``."""
    section = markdown.split(heading, 1)[1]
    rows, seen_table = [], False
    for line in section.splitlines()[1:]:
        if line.startswith("|"):
            seen_table = True
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        elif seen_table:
            break
    return rows[1:]  # without the header row


def first_code(cell: str) -> str:
    match = re.search(r"`([^`]+)`", cell)
    assert match, f"no `code` in table cell {cell!r}"
    return match.group(1)


# -- schemas and examples -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SCHEMA_DOCS))
def test_schema_is_valid_2020_12(name):
    doc = SCHEMA_DOCS[name]
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"].endswith(f"/{name}.schema.json")
    Draft202012Validator.check_schema(doc)


def test_every_message_kind_has_a_schema():
    expected = {"envelope", "telemetry", "telemetry-batch", "status", "mission-event", "connection",
                "register-request", "register-accepted", "register-rejected", "command"}
    expected |= {"command-" + t.replace(".", "-") for t in envelope.COMMAND_TYPES}
    assert set(SCHEMA_DOCS) == expected


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_validates_against_its_schema(path):
    assert schema_name(path) in SCHEMA_DOCS, f"{path.name}: no schema {schema_name(path)}.schema.json"
    assert errors(schema_name(path), json.loads(path.read_text(encoding="utf-8"))) == []


# Base schemas and the examples of the schemas that extend them.
BASES = {"envelope": ("telemetry.", "status", "mission-event", "connection"), "command": ("command-",)}


def test_every_schema_has_an_example():
    shown = {schema_name(p) for p in EXAMPLE_FILES} | set(BASES)
    assert set(SCHEMA_DOCS) - shown == set()


@pytest.mark.parametrize("base", sorted(BASES))
def test_examples_validate_against_their_base_schema(base):
    extending = [p for p in EXAMPLE_FILES if p.name.startswith(BASES[base])]
    assert extending
    for path in extending:
        assert errors(base, json.loads(path.read_text(encoding="utf-8"))) == [], path.name


def test_command_schemas_cover_exactly_the_command_types():
    declared = {doc["properties"]["type"]["const"] for name, doc in SCHEMA_DOCS.items()
                if name.startswith("command-")}
    assert declared == set(envelope.COMMAND_TYPES)
    assert set(SCHEMA_DOCS["command"]["properties"]["type"]["enum"]) == set(envelope.COMMAND_TYPES)


def _example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))


def _without(path: str):
    def mutate(doc):
        *parents, last = path.split(".")
        target = doc
        for key in parents:
            target = target[key]
        del target[last]
    return mutate


def _set(path: str, value):
    def mutate(doc):
        *parents, last = path.split(".")
        target = doc
        for key in parents:
            target = target[int(key) if key.isdigit() else key]
        target[last] = value
    return mutate


# Messages the ingest dead-letters must not validate either: the schemas are not vacuous.
INVALID = [
    ("telemetry", _without("data.lat")),
    ("telemetry", _set("data.lat", "48.1")),
    ("telemetry", _set("data.lat", 91)),
    ("telemetry", _set("data.rpm_label", "fast")),
    ("telemetry", _set("v", 2)),
    ("telemetry", _without("msg_id")),
    ("telemetry", _set("msg_id", "x" * 65)),
    ("telemetry", _set("ts", 1764100800.5)),
    ("telemetry", _set("data.vehicle_id", "no/slashes")),
    ("telemetry-batch", _set("batch", [])),
    ("telemetry-batch", _set("batch.0.data.lon", None)),
    ("status", _set("data.mode", "TURBO")),
    ("status", _set("data.errors", [{"code": "E1", "level": "INFO"}])),
    ("status", _set("data.estop", "yes")),
    ("mission-event.progress", _without("data.progress")),
    ("mission-event.progress", _set("data.progress.percent", 140)),
    ("mission-event.accepted", _set("data.event", "started")),
    ("mission-event.accepted", _set("data.mission_id", "not-a-uuid")),
    ("connection.online", _set("data.state", "AWAY")),
    ("register-request", _without("data.enrollment_token")),
    ("register-rejected", _set("data.reason", "because")),
    ("command-mission-dispatch", _without("data.mission_id")),
    ("command-mission-dispatch", _set("type", "mission.cancel")),
    ("command-emergency-stop", _set("data.reason", "")),
    ("command-config-update", _without("data.version")),
]


@pytest.mark.parametrize("example,mutate", INVALID,
                         ids=[f"{name}-{i}" for i, (name, _) in enumerate(INVALID)])
def test_invalid_message_is_rejected_by_its_schema(example, mutate):
    doc = copy.deepcopy(_example(example))
    mutate(doc)
    assert errors(example.split(".")[0], doc), f"{example} still validates after the change"


# -- PROTOCOL.md ----------------------------------------------------------------------------------------------
def test_protocol_json_blocks_validate():
    blocks = protocol_blocks()
    assert len(blocks) >= len(EXAMPLE_FILES)
    for name, text in blocks:
        assert name in SCHEMA_DOCS, f"PROTOCOL.md names an unknown schema {name!r}"
        assert errors(name, json.loads(text)) == [], f"PROTOCOL.md block for {name}:\n{text}"


def test_protocol_shows_every_example_file():
    shown = {(name, json.dumps(json.loads(text), sort_keys=True)) for name, text in protocol_blocks()}
    for path in EXAMPLE_FILES:
        key = (schema_name(path), json.dumps(json.loads(path.read_text(encoding="utf-8")), sort_keys=True))
        assert key in shown, f"{path.name} is not shown in PROTOCOL.md as a ```json schema={key[0]} block"


def test_protocol_topic_table_matches_the_topic_module():
    rows = table_rows(PROTOCOL.read_text(encoding="utf-8"), "## Topic tree")
    per_vehicle, fleet_wide = set(), set()
    for row in rows:
        topic = first_code(row[0])
        parsed = topics.parse(topic.replace("{vid}", "amr-0042"))
        assert parsed is not None, f"PROTOCOL.md topic {topic!r} is not in the topic tree"
        (fleet_wide if parsed.vehicle_id is None else per_vehicle).add(parsed.kind.value)
        assert topic == (topics.fleet_command_topic() if parsed.vehicle_id is None
                         else topics.vehicle_topic("amr-0042", parsed.kind).replace("amr-0042", "{vid}"))
    assert per_vehicle == {kind.value for kind in topics.Kind}
    assert fleet_wide == {topics.Kind.CMD.value}


def test_protocol_command_table_matches_the_command_types():
    rows = table_rows(PROTOCOL.read_text(encoding="utf-8"), "## Commands")
    assert [first_code(row[0]) for row in rows] == list(envelope.COMMAND_TYPES)


def test_protocol_mermaid_diagrams_are_present():
    text = PROTOCOL.read_text(encoding="utf-8")
    assert text.count("```mermaid\nsequenceDiagram") >= 3
    assert "```mermaid\nstateDiagram-v2" in text


# -- what the backend builds validates against the published schemas -----------------------------------------
@pytest.mark.parametrize("command_type", envelope.COMMAND_TYPES)
def test_backend_commands_validate(command_type):
    data = _example("command-" + command_type.replace(".", "-"))["data"]
    assert errors("command-" + command_type.replace(".", "-"), envelope.command(command_type, data)) == []


def test_dispatcher_mission_command_validates():
    from api.dispatcher import mission_command
    mission = {"id": uuid.uuid4(), "name": "Restock aisle 7", "priority": 0,
               "waypoints": [{"lat": 48.1, "lon": 11.5}], "tasks": [{"type": "pick", "params": {}}],
               "timeout_s": 600, "expires_at": datetime(2026, 11, 25, 21, 0, tzinfo=UTC)}
    assert errors("command-mission-dispatch", mission_command(mission, msg_id=str(uuid.uuid4()))) == []
    mission["expires_at"] = None
    assert errors("command-mission-dispatch", mission_command(mission, msg_id=str(uuid.uuid4()))) == []


def test_vehicle_side_envelopes_validate():
    assert errors("telemetry", envelope.message({"lat": 48.1, "lon": 11.5, "speed_mps": 0.5}, seq=1)) == []
    assert errors("connection", envelope.message({"state": "CONNECTIONBROKEN"}, seq=0)) == []


def sql_reason_codes() -> set[str]:
    """The dead-letter reason codes that sql/code/10_ingest_common.sql documents in its header."""
    sql = (ROOT / "sql" / "code" / "10_ingest_common.sql").read_text(encoding="utf-8")
    block = sql.split("-- Reason codes in rejected_messages.reason", 1)[1].split("\n-- Not rejections", 1)[0]
    return set(re.findall(r"^--\s+([a-z0-9_]+)\s{2,}\S", block, re.MULTILINE))


def test_protocol_lists_exactly_the_dead_letter_reasons_of_the_ingest():
    listed = {first_code(row[0]) for row in table_rows(PROTOCOL.read_text(encoding="utf-8"),
                                                         "## Errors and dead letters")}
    codes = sql_reason_codes()
    assert len(codes) > 10
    assert listed == codes
    sql_text = "\n".join(path.read_text(encoding="utf-8") for path in sorted((ROOT / "sql").rglob("*.sql")))
    for code in codes:
        assert f"'{code}'" in sql_text, f"reason {code} is documented but never used in sql/"


# -- the examples are what the real ingest accepts (PostgreSQL, the same INSERTs the broker's actions run) ----
INBOX = {"telemetry": "telemetry_inbox", "telemetry-batch": "telemetry_inbox", "status": "status_inbox",
         "mission-event": "mission_inbox", "connection": "connection_inbox"}
TOPIC_KIND = {"telemetry": "telemetry", "telemetry-batch": "telemetry", "status": "status",
              "mission-event": "mission", "connection": "connection"}
# mission state each mission-event example starts from
MISSION_FROM = {"accepted": "dispatched", "progress": "accepted", "completed": "in_progress", "rejected": "dispatched",
                "paused": "in_progress"}
VEHICLE = "amr-0042"


def _ingest(cur, path: Path) -> list[tuple]:
    import base64
    name = schema_name(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    ts = doc["ts"] if "ts" in doc else doc["batch"][0]["ts"]
    cur.execute("SELECT count(*) FROM rejected_messages")
    before = cur.fetchone()[0]
    cur.execute(f"INSERT INTO ingest.{INBOX[name]} (clientid, topic, payload_b64, received_at_ms) "
                "VALUES (%s, %s, %s, %s)",
                (VEHICLE, f"fleet/v1/{VEHICLE}/{TOPIC_KIND[name]}",
                 base64.b64encode(path.read_bytes()).decode(), ts + 1000))
    cur.execute("SELECT reason, detail FROM rejected_messages ORDER BY id OFFSET %s", (before,))
    return cur.fetchall()


@pytest.mark.parametrize("path", [p for p in EXAMPLE_FILES if schema_name(p) in INBOX], ids=lambda p: p.name)
def test_example_is_accepted_by_the_ingest(conn, path):
    with conn.cursor() as cur:
        cur.execute("INSERT INTO fleets (id, name) VALUES ('warehouse-1', 'Warehouse 1')")
        cur.execute("INSERT INTO vehicles (id, fleet_id, status) VALUES (%s, 'warehouse-1', 'active')", (VEHICLE,))
        if schema_name(path) == "mission-event":
            doc = json.loads(path.read_text(encoding="utf-8"))["data"]
            cur.execute("INSERT INTO missions (id, vehicle_id, fleet_id, name, state) "
                        "VALUES (%s, %s, 'warehouse-1', 'example', %s)",
                        (doc["mission_id"], VEHICLE, MISSION_FROM[doc["event"]]))
        assert _ingest(cur, path) == []
        if schema_name(path) == "mission-event":
            cur.execute("SELECT count(*) FROM mission_events WHERE mission_id = %s", (doc["mission_id"],))
            assert cur.fetchone()[0] == 1


def test_authsvc_registration_answers_validate():
    from authsvc import registration
    from fleetcore import credentials, registry
    accepted = registry.RegistrationOutcome(True, None, "registered", VEHICLE, fleet_id="warehouse-1",
                                            secret=credentials.new_device_secret())
    assert errors("register-accepted", registration._answer(accepted, "a5b6c7d8")) == []
    example = json.loads((EXAMPLES / "register-accepted.certificate.json").read_text(encoding="utf-8"))["data"]
    with_certificate = registry.RegistrationOutcome(
        True, None, "registered", VEHICLE, fleet_id="warehouse-1", certificate_pem=example["certificate"],
        certificate_not_after=datetime.fromisoformat(example["not_after"]))
    answer = registration._answer(with_certificate, "a5b6c7d8", example["ca_chain"])
    assert errors("register-accepted", answer) == [] and "password" not in answer["data"]
    assert answer["data"]["not_after"] == example["not_after"]
    for reason in registry._REASON_TEXT:
        assert errors("register-rejected", registration._answer(registry.rejected(VEHICLE, reason), None)) == []


def test_the_emergency_commands_the_backend_sends_validate():
    from api.emergency_commands import command_message
    row = {"vehicle_id": VEHICLE, "stop_id": 17, "scope": "fleet", "reason": "person in the aisle", "set_by": "alice",
           "release_reason": None, "released_by": "bob"}
    assert errors("command-emergency-stop", command_message({**row, "command": "stop"})) == []
    assert errors("command-emergency-release", command_message({**row, "command": "release"})) == []


def test_the_simulators_capability_sheet_validates():
    import random

    from simulator.controller import Controller
    from simulator.motion import Motion
    sheet = Controller(VEHICLE, Motion(48.1, 11.5), rng=random.Random(1)).capabilities()
    request = envelope.message({"enrollment_token": "enr_x", "capabilities": sheet}, seq=0)
    assert errors("register-request", request) == []
