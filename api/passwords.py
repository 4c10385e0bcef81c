"""The rule for operator passwords, for the users endpoints and for the first admin (api/first_admin.py), and the
cost of hashing them. Hashing and checking them is api/auth.py (bcrypt)."""
from __future__ import annotations

from collections.abc import Mapping

from fleetcore.config import ConfigError, env_int

MIN_CHARACTERS = 12
MAX_BYTES = 72  # bcrypt uses at most 72 bytes of a password (and the library refuses more)

# bcrypt's cost: a hash takes 2^cost rounds, ~0.25 s at 12 on one core, so an offline guess does too. Each hash
# keeps the cost it was made with, so a change applies to new and changed passwords. The tests' stacks set the
# lowest one (tests/conftest.py): they log in hundreds of times and guess nothing.
HASH_COST_VARIABLE = "API_PASSWORD_HASH_COST"
DEFAULT_HASH_COST = 12
MIN_HASH_COST, MAX_HASH_COST = 4, 31   # what bcrypt accepts


def problem(password: str) -> str | None:
    """Why ``password`` may not become an operator's password, or None if it may."""
    if len(password) < MIN_CHARACTERS:
        return f"at least {MIN_CHARACTERS} characters"
    if len(password.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        return f"at most {MAX_BYTES} bytes (UTF-8)"  # say so instead of truncating
    return None


def check_hash_cost(cost: int) -> int:
    if not MIN_HASH_COST <= cost <= MAX_HASH_COST:
        raise ConfigError(f"{HASH_COST_VARIABLE} must be from {MIN_HASH_COST} to {MAX_HASH_COST}, got {cost}")
    return cost


def hash_cost(env: Mapping[str, str] | None = None) -> int:
    """The cost from ``API_PASSWORD_HASH_COST`` for a process without an ApiConfig (``fleetctl create-admin``,
    the embedded launcher creating the first admin)."""
    return check_hash_cost(env_int(HASH_COST_VARIABLE, DEFAULT_HASH_COST, env=env))
