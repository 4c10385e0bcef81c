"""EMQX's ban list and flapping detection (emqx_banned.erl, emqx_flapping.erl of EMQX 5.10.4).

- **Banned**: entries ``(as, who)`` with ``as`` one of ``clientid``, ``username``, ``peerhost``; ``at`` and ``until``
  in epoch seconds, ``until`` ``None`` = for ever. A CONNECT whose client id, username or address is banned
  (``until`` later than now, to the second) is refused with reason ``banned`` (0x8A, CONNACK 5 "not authorized"
  for MQTT 3.1.1, emqx_reason_codes:compat/2) before authentication (emqx_channel:check_banned/2). A new
  client-id ban kicks that client's session (emqx_banned:on_banned/1). Expired entries are purged every minute.
- **Flapping**: every CONNECT that is not banned counts for its client id (emqx_channel:count_flapping_event/2,
  before authentication — wrong passwords count too). The count starts at the first CONNECT; when it reaches
  ``max_count`` and that first CONNECT is less than ``window_time`` ago, the client id is banned for ``ban_time``
  (by "flapping detector", reason "flapping is detected"), and the count starts again. Counts older than
  ``window_time`` are dropped every ``window_time`` (emqx_flapping handle_info garbage_collect). The CONNECT that
  trips the detector is not refused itself: the ban refuses the next one.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleetcore.logs import log_event

from .config import FlappingConfig

log = logging.getLogger("emqx.standin.banned")

KINDS = ("clientid", "username", "peerhost")
PURGE_INTERVAL_S = 60.0           # emqx_banned.erl: expire_banned_items every minute


@dataclass
class Ban:
    kind: str                     # "as" in the API
    who: str
    by: str
    reason: str
    at: int                       # epoch seconds
    until: int | None             # epoch seconds; None = infinity

    def active(self, now_s: int) -> bool:
        return self.until is None or self.until > now_s


class BannedTable:
    def __init__(self, kick: Callable[[str], bool]) -> None:
        self._bans: dict[tuple[str, str], Ban] = {}
        self._kick = kick

    def check(self, clientid: str | None, username: str | None, peerhost: str | None) -> bool:
        if not self._bans:
            return False
        now = int(time.time())
        for kind, who in (("clientid", clientid), ("username", username), ("peerhost", peerhost)):
            if who is not None and (ban := self._bans.get((kind, who))) is not None and ban.active(now):
                return True
        return False

    def create(self, ban: Ban) -> Ban | None:
        """Add ``ban``; returns the existing active entry instead when there is one (EMQX: already_exist)."""
        old = self._bans.get((ban.kind, ban.who))
        if old is not None and old.active(int(time.time())):
            return old
        self._bans[(ban.kind, ban.who)] = ban
        if ban.kind == "clientid":
            self._kick(ban.who)
        return None

    def delete(self, kind: str, who: str) -> bool:
        return self._bans.pop((kind, who), None) is not None

    def clear(self) -> None:
        self._bans.clear()

    def entries(self) -> list[Ban]:
        return list(self._bans.values())

    def purge_expired(self) -> None:
        now = int(time.time())
        for key in [k for k, ban in self._bans.items() if not ban.active(now)]:
            del self._bans[key]


class FlappingDetector:
    def __init__(self, config: FlappingConfig, banned: BannedTable) -> None:
        self.config = config
        self.banned = banned
        self._counts: dict[str, list[float]] = {}     # clientid → [started_at (epoch s), count]

    def detect(self, clientid: str, peerhost: str) -> bool:
        """Count one CONNECT of ``clientid``; ban it when it is flapping. True = detected."""
        cfg = self.config
        if not cfg.enable:
            return False
        now = time.time()
        record = self._counts.setdefault(clientid, [now, 0])
        record[1] += 1
        if record[1] < cfg.max_count:
            return False
        del self._counts[clientid]
        if now - record[0] >= cfg.window_time_s:
            log_event(log, "flapping.window_passed", clientid=clientid, peerhost=peerhost, count=int(record[1]))
            return False
        log_event(log, "flapping.detected", logging.WARNING, clientid=clientid, peerhost=peerhost,
                  count=int(record[1]), window_s=cfg.window_time_s, ban_s=cfg.ban_time_s)
        at = int(now)
        self.banned.create(Ban("clientid", clientid, "flapping detector", "flapping is detected", at,
                               at + int(cfg.ban_time_s)))
        return True

    def collect_garbage(self) -> None:
        oldest = time.time() - self.config.window_time_s
        for clientid in [c for c, (started, _) in self._counts.items() if started < oldest]:
            del self._counts[clientid]


async def run_housekeeping(banned: BannedTable, flapping: FlappingDetector) -> None:
    """The two periodic sweeps: expired bans every minute, stale flapping counts every ``window_time``."""
    loop = asyncio.get_running_loop()
    next_purge = loop.time() + PURGE_INTERVAL_S
    window = flapping.config.window_time_s if flapping.config.enable else None
    next_gc = loop.time() + window if window else float("inf")
    while True:
        await asyncio.sleep(max(0.01, min(next_purge, next_gc) - loop.time()))
        now = loop.time()
        if now >= next_purge:
            banned.purge_expired()
            next_purge = now + PURGE_INTERVAL_S
        if window and now >= next_gc:
            flapping.collect_garbage()
            next_gc = now + window
