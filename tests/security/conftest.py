"""The SQL ingest fixtures (tests/sql/conftest.py) for the security tests that feed the ingest directly."""
from tests.sql.conftest import inbox, ingest_conn, ingest_url, q, vehicles  # noqa: F401 - fixtures
