"""schemathesis against the OpenAPI document the api serves: generated requests for every operation, as an admin.
No answer may be a 5xx, and every answer must match its declared status codes, content type and schema."""
from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from tests.support.operators import ApiClient
from tests.support.reliability import record

# Operations that would end the admin session the fuzzer itself uses, or stop every vehicle of the shared stack.
SESSION_ENDING = r"^/api/v1/auth/(logout|refresh)$|^/api/v1/users/\{[^}]+\}$|^/api/v1/emergency-"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# `make test` runs a fixed, repeatable selection; FLEET_FUZZ_EXAMPLES=200 FLEET_FUZZ_RANDOM=1 digs deeper.
EXAMPLES_PER_OPERATION = int(os.environ.get("FLEET_FUZZ_EXAMPLES", "15"))
DERANDOMIZE = os.environ.get("FLEET_FUZZ_RANDOM") != "1"


def test_generated_requests_get_documented_answers(stack, api_url):
    admin = ApiClient(api_url).login("admin", stack.secrets["FLEET_ADMIN_PASSWORD"])
    headers = {"Authorization": f"Bearer {admin.tokens['access_token']}"}
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json").exclude(path_regex=SESSION_ENDING)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20, "the OpenAPI document lists too few operations"
    calls = 0
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=DERANDOMIZE,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            nonlocal calls
            calls += 1
            case.call_and_validate(base_url=api_url, checks=CHECKS, headers=headers)

        fuzz()
    record("fuzz", "generated API requests (schemathesis, all operations)", operations=len(operations),
           requests=calls, server_errors=0, schema_violations=0)
