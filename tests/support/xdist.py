"""How ``make test`` shares the tests between its pytest-xdist workers (``-n 2 --dist loadscope``).

Each worker is a pytest session of its own: it starts its own session stack (tests/conftest.py) on ports of its
own slice (fleetctl/ports.py), in its own temporary directories, with its own databases in that stack's
PostgreSQL. A fixture of a wider scope than the test must see all its tests on one worker, or it runs on each:

* a module-scoped fixture (a stack or broker of one file): every test of a file goes to one worker — also the
  methods of a class, which xdist's own ``loadscope`` would send apart from the module's functions;
* a package-scoped fixture (tests/failure's outage stack): every test of a package whose ``conftest.py`` declares
  one goes to one worker, found by reading the conftest files, so a new one needs no change here.

Bigger units go first (xdist's default ``--loadscopereorder``), so the workers finish close together.
"""
from __future__ import annotations

import re
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling

_PACKAGE_SCOPE = re.compile(r"""scope\s*=\s*["']package["']""")


def packages_with_package_fixtures(root: Path) -> tuple[str, ...]:
    """The test packages ("tests/failure/") whose conftest.py declares a package-scoped fixture."""
    found = []
    for conftest in sorted(root.glob("tests/**/conftest.py")):
        if _PACKAGE_SCOPE.search(conftest.read_text(encoding="utf-8")):
            found.append(f"{conftest.parent.relative_to(root).as_posix()}/")
    return tuple(found)


class StackScopeScheduling(LoadScopeScheduling):
    """xdist's ``loadscope`` with a file, or a package with a package-scoped fixture, as the unit of work."""

    def __init__(self, config, log=None) -> None:
        super().__init__(config, log)
        self.packages = packages_with_package_fixtures(Path(config.rootpath))

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.split("::", 1)[0]
        for package in self.packages:
            if path.startswith(package):
                return package
        return path
