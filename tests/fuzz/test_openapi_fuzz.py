"""schemathesis against the OpenAPI document the api serves: generated requests for every operation, as an admin.
No answer may be a 5xx, and every answer must match its declared status codes, content type and schema."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from tests.support.operators import ApiClient

# Operations that would end the admin session the fuzzer itself uses, or stop every vehicle of the shared stack.
SESSION_ENDING = r"^/api/v1/auth/(logout|refresh)$|^/api/v1/users/\{[^}]+\}$|^/api/v1/emergency-"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(api_url):
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json")


@pytest.fixture(scope="module")
def fuzz_admin(stack, api_url) -> ApiClient:
    return ApiClient(api_url).login("admin", stack.secrets["FLEET_ADMIN_PASSWORD"])


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path_regex=SESSION_ENDING)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_get_documented_answers(case, fuzz_admin, api_url):
    case.call_and_validate(base_url=api_url, checks=CHECKS,
                           headers={"Authorization": f"Bearer {fuzz_admin.tokens['access_token']}"})
