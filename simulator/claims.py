"""Which vehicles each running ``fleet-sim`` drives, so two simulators never drive the same vehicle by accident.

Two MQTT clients with the same client id take the session from each other in turn: the broker disconnects the
older one (reason `takenover`, docs/EMQX.md §5), it reconnects and disconnects the newer one, and neither gets much
done. So a run claims its vehicle ids before connecting: it holds an exclusive lock on
``<state-dir>/runs/<pid>.ids`` (the ids, one per line) for as long as it runs, and a new run refuses ids that a
live run holds. The kernel drops the lock when its holder dies, even by SIGKILL, so a crashed run never blocks
the next one. A vehicle connected from elsewhere (another state directory, another machine, a real vehicle) is
caught by ``fleet-sim``'s presence check through the api instead.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path


class VehiclesInUse(Exception):
    """Some of the wanted vehicles are driven by another live run: ``{vehicle_id: pid}``."""

    def __init__(self, holders: dict[str, int]) -> None:
        self.holders = holders
        ids = sorted(holders)
        pids = sorted(set(holders.values()))
        shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        super().__init__(f"{shown} {'is' if len(ids) == 1 else 'are'} already run by another fleet-sim "
                         f"(pid {', '.join(map(str, pids))})")


class RunClaims:
    """This process's claim on its vehicle ids in one state directory."""

    def __init__(self, state_dir: Path | str) -> None:
        self.directory = Path(state_dir) / "runs"
        self.path = self.directory / f"{os.getpid()}.ids"
        self._fd: int | None = None

    @contextmanager
    def _exclusive(self):
        """Serialise check-and-claim of concurrent starts."""
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def claim(self, vehicle_ids: list[str], *, force: bool = False) -> None:
        """Claim ``vehicle_ids``; VehiclesInUse names the ids another live run holds (unless ``force``)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._exclusive():
            if not force:
                holders = self.holders(set(vehicle_ids))
                if holders:
                    raise VehiclesInUse(holders)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, "".join(f"{v}\n" for v in vehicle_ids).encode())
            self._fd = fd

    def holders(self, wanted: set[str]) -> dict[str, int]:
        """Which of ``wanted`` live runs hold, by pid; removes the files of runs that are gone."""
        found: dict[str, int] = {}
        for path in self.directory.glob("*.ids"):
            if path == self.path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    ids = set(Path(path).read_text(encoding="utf-8").split())
                    pid = int(path.stem) if path.stem.isdigit() else 0
                    found.update(dict.fromkeys(ids & wanted, pid))
                else:
                    path.unlink(missing_ok=True)     # its run has ended
            finally:
                os.close(fd)
        return found

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
