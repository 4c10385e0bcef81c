-- 070_login_throttle.sql — failed-login counters that hold under parallel attempts.
--
-- login_failures (020) was read before the bcrypt check and written after it, so attempts sent in parallel all
-- read the same count: 64 at once got 19 tries where the limit was 5. Here each attempt reserves its place with one
-- INSERT … ON CONFLICT DO UPDATE … RETURNING on every counter it touches, before the password is checked, and the
-- row lock orders parallel attempts: the 6th sees 6 and is refused (api/throttle.py).
--
-- One row per counter: "pair:<username>|<address>", "user:<username>", "addr:<address>" and "global". A counter
-- counts the failures (and the attempts in flight) since window_start; once the window has passed, the next attempt
-- starts a new one.
CREATE TABLE login_throttle (
    key           text PRIMARY KEY,
    failures      integer NOT NULL CHECK (failures >= 0),
    window_start  timestamptz NOT NULL
);
CREATE INDEX login_throttle_window_start ON login_throttle (window_start);

DROP TABLE login_failures;
