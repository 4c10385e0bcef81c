"""The login throttle, in one place: who may try a password now, and how much bcrypt work logins may cost.

Two things hold an attacker back, for ``POST /auth/login`` and the OAuth2 password grant alike (api/tokens.py):

* **Counters of failed logins** (``login_throttle``, sql/070_login_throttle.sql), each over
  ``API_LOGIN_FAILURE_WINDOW_S``:

  ========  ===================================  ===================================================================
  scope     limit (variable, default)            holds back
  ========  ===================================  ===================================================================
  pair      ``API_LOGIN_MAX_FAILURES`` 5         one client guessing one account's password
  user      ``API_LOGIN_MAX_FAILURES_PER_USER``  guessing one account from many addresses; also how many failures
            50                                   it takes anyone to lock the account out, hence well above *pair*
  addr      ``API_LOGIN_MAX_FAILURES_PER_ADDR``  one client spraying a password across many usernames
            50
  global    ``API_LOGIN_MAX_FAILURES_GLOBAL``    guessing from many addresses at once: past it every login waits
            1000                                 for the window, so it is far above any honest failure rate
  ========  ===================================  ===================================================================

  An attempt reserves its place in all four with one statement *before* the password is checked (the row locks
  order parallel attempts, so 64 at once get exactly 5 tries), and gives it back when it turns out not to be a
  failure: a refused attempt gives back all four (so a refused flood cannot push *global* up), a success gives back
  *user*, *addr* and *global* and clears its *pair*. A limit of 0 turns that scope off.

* **A gate on bcrypt** (``API_LOGIN_CONCURRENCY``, default 2): at most that many password checks run at once in an
  api process. Each costs a bcrypt (~0.25 s of CPU, unknown usernames included, so that the answer's timing does not
  reveal which exist). Twice as many logins may wait for a slot; any more are answered 503 ``login_busy`` with
  ``Retry-After`` at once, so a flood of logins cannot take the CPU and the threads the rest of the API needs.

The client address is the peer's, or — when the peer is a trusted proxy (``API_TRUSTED_PROXIES``) — the last
address in ``X-Forwarded-For`` that is not a trusted proxy (``client_address``). Otherwise every client behind a
reverse proxy would share the proxy's address, and 5 wrong passwords from anyone would lock any user out.
"""
from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fleetcore.config import ConfigError
from fleetcore.errors import HttpError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- the client's address ---------------------------------------------------------------------------------------
def trusted_networks(setting: str) -> tuple[Network, ...]:
    """``API_TRUSTED_PROXIES``: comma-separated addresses or CIDR networks (``10.0.0.0/8, 127.0.0.1``)."""
    try:
        return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in setting.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"environment variable API_TRUSTED_PROXIES: {exc}") from None


def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then ``X-Forwarded-For`` read from
    the right (each proxy appends the address it saw), skipping trusted proxies. Anything left of the first
    untrusted address was written by the client and proves nothing."""
    address = peer or "unknown"
    if not forwarded_for or not _is_trusted(address, trusted):
        return address
    for hop in reversed([part.strip() for part in forwarded_for.split(",")]):
        try:
            hop = str(ipaddress.ip_address(hop))
        except ValueError:
            return address  # a proxy of ours wrote garbage (or nothing): the proxy's own address, never a guess
        if not _is_trusted(hop, trusted):
            return hop
        address = hop
    return address


# -- failure counters ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    window_s: int
    pair: int
    user: int
    addr: int
    global_: int

    def keys(self, username: str, address: str) -> dict[str, int]:
        """The counters one attempt touches and the limit of each (a limit of 0: that scope is off)."""
        name = username.lower()
        limits = {f"pair:{name}|{address}": self.pair, f"user:{name}": self.user, f"addr:{address}": self.addr,
                  "global": self.global_}
        return {key: limit for key, limit in limits.items() if limit > 0}


# Reserve a place in each counter. Keys in a fixed order, so parallel attempts lock the rows in the same order
# and never deadlock; a window that has passed starts again at this attempt.
_RESERVE = """
INSERT INTO login_throttle AS t (key, failures, window_start)
SELECT key, 1, now() FROM unnest(%(keys)s::text[]) AS key ORDER BY key
ON CONFLICT (key) DO UPDATE
   SET failures     = CASE WHEN t.window_start > now() - make_interval(secs => %(window)s)
                           THEN t.failures + 1 ELSE 1 END,
       window_start = CASE WHEN t.window_start > now() - make_interval(secs => %(window)s)
                           THEN t.window_start ELSE now() END
RETURNING key, failures,
          EXTRACT(EPOCH FROM t.window_start + make_interval(secs => %(window)s) - now())::float AS retry_after_s
"""
# Give a place back (the rows locked in key order again, for the same reason).
_GIVE_BACK = """
UPDATE login_throttle t SET failures = greatest(t.failures - 1, 0)
  FROM (SELECT key FROM login_throttle WHERE key = ANY(%s) ORDER BY key FOR UPDATE) AS locked
 WHERE t.key = locked.key
"""
# Expired counters go, a bounded batch at a time; a row another attempt holds is skipped (never waited for, so the
# prune cannot deadlock with an attempt locking its counters in key order).
_PRUNE = """
DELETE FROM login_throttle WHERE key IN (
    SELECT key FROM login_throttle WHERE window_start < now() - make_interval(secs => %s)
     LIMIT 1000 FOR UPDATE SKIP LOCKED)
"""


class Throttled(HttpError):
    def __init__(self, retry_after_s: float) -> None:
        retry_after = max(1, int(retry_after_s + 0.999))
        super().__init__(429, "too many failed logins; try again later", headers={"Retry-After": str(retry_after)},
                         details={"retry_after_s": retry_after})


@dataclass(frozen=True)
class Attempt:
    """A login attempt holding its place in the counters (``reserve``): ``succeeded`` gives it back."""
    limits: Limits
    keys: dict[str, int]
    pair_key: str

    def succeeded(self, cur) -> None:
        """Not a failure: give back the place in the shared counters and forget this client's failures on this
        account. The account's own counter keeps its failures, so a guesser cannot reset it by logging in to an
        account of their own, nor the owner reset it for a guesser."""
        cur.execute(_GIVE_BACK, ([key for key in self.keys if key != self.pair_key],))
        cur.execute("DELETE FROM login_throttle WHERE key = %s", (self.pair_key,))

    def failed(self, cur) -> None:
        """A failure: the place stays taken until the window passes. Expired counters are pruned here, where they
        are made (an index on window_start keeps it cheap)."""
        cur.execute(_PRUNE, (self.limits.window_s,))


def reserve(cur, limits: Limits, username: str, address: str) -> Attempt:
    """Count this attempt in every counter it belongs to, or raise ``Throttled`` (429) — having given the places
    back — when one is past its limit. Commit before checking the password, so parallel attempts see it."""
    keys = limits.keys(username, address)
    cur.execute(_RESERVE, {"keys": list(keys), "window": limits.window_s})
    over = [row for row in cur.fetchall() if row["failures"] > keys[row["key"]]]
    if over:
        cur.execute(_GIVE_BACK, (list(keys),))
        raise Throttled(max(row["retry_after_s"] for row in over))
    return Attempt(limits, keys, next(key for key in keys if key.startswith("pair:")) if limits.pair > 0 else "")


# -- the bcrypt gate -------------------------------------------------------------------------------------------
class LoginGate:
    """At most ``slots`` password checks at once in this process. A few more logins (twice as many) wait for a
    slot, so that operators logging in together are not refused; a login that finds those places taken too, or
    waits longer than ``wait_s``, is refused with 503 at once: a flood holds at most 3 × ``slots`` threads."""

    def __init__(self, slots: int, wait_s: float = 5.0) -> None:
        self._slots = threading.BoundedSemaphore(max(1, slots))
        self._admitted = 0
        self._max_admitted = 3 * max(1, slots)
        self._lock = threading.Lock()
        self._wait_s = wait_s

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            admitted = self._admitted < self._max_admitted
            self._admitted += admitted
        try:
            if not admitted or not self._slots.acquire(timeout=self._wait_s):
                raise HttpError(503, "too many logins in progress; try again in a moment", code="login_busy",
                                headers={"Retry-After": "1"})
            try:
                yield
            finally:
                self._slots.release()
        finally:
            with self._lock:
                self._admitted -= admitted
