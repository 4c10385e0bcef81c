"""What a test needs from the machine or the stack, in one place.

On a developer's machine a missing tool (npm, openssl) or a stack component left out with
``FLEET_STACK_COMPONENTS`` skips the test and says why. In CI (``CI=true``) the same absence fails the test:
a CI run must never pass by skipping what it was meant to check. ``tests/conftest.py`` enforces the same for
any other skip.
"""
from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def missing(what: str) -> NoReturn:
    """Skip (locally) or fail (CI) the current test because ``what`` is absent."""
    if in_ci():
        pytest.fail(f"{what}; under CI=true that is a failure, not a skip: CI must run every test", pytrace=False)
    pytest.skip(what)


def require_tool(name: str, purpose: str) -> str:
    """The path of the program ``name`` on PATH; ``purpose`` says what the test needs it for."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed ({purpose})")
    return path


def require_components(stack, *names: str) -> None:
    """The stack's components ``names`` must be running (FLEET_STACK_COMPONENTS may leave some out)."""
    running = {component.name for component in stack.started}
    absent = sorted(set(names) - running)
    if absent:
        missing(f"the stack runs without {', '.join(absent)} (running: {', '.join(sorted(running)) or 'none'}; "
                f"FLEET_STACK_COMPONENTS={os.environ.get('FLEET_STACK_COMPONENTS')!r})")
