"""The rule for operator passwords, for the users endpoints and for the first admin (api/first_admin.py).
Hashing and checking them is api/auth.py (bcrypt)."""
from __future__ import annotations

MIN_CHARACTERS = 12
MAX_BYTES = 72  # bcrypt uses at most 72 bytes of a password (and the library refuses more)


def problem(password: str) -> str | None:
    """Why ``password`` may not become an operator's password, or None if it may."""
    if len(password) < MIN_CHARACTERS:
        return f"at least {MIN_CHARACTERS} characters"
    if len(password.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        return f"at most {MAX_BYTES} bytes (UTF-8)"  # say so instead of truncating
    return None
