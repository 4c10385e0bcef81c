"""The operator fixtures live in tests/support/fleet_fixtures.py (shared with every test package)."""
from tests.support.operators import ApiClient, unique  # noqa: F401 - re-exported for the api tests
