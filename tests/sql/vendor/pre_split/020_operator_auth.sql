-- 020_operator_auth.sql — operator sessions, rotating refresh tokens, login throttling.
--
-- A login opens a session. Access tokens (JWT, 10 minutes) name their session, so logging out — or a refresh
-- token being replayed — revokes every token of that session at once. Refresh tokens are opaque, stored as
-- SHA-256, single use: each refresh returns a new one and marks the old one used; presenting a used one again
-- means it was stolen, and the whole session is revoked (reuse detection).

CREATE TABLE auth_sessions (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id            bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at         timestamptz NOT NULL DEFAULT now(),
    last_refreshed_at  timestamptz,
    expires_at         timestamptz NOT NULL,
    revoked_at         timestamptz,
    revoked_reason     text,
    client_addr        text,
    user_agent         text
);
CREATE INDEX auth_sessions_user ON auth_sessions (user_id);

CREATE TABLE refresh_tokens (
    token_hash  bytea PRIMARY KEY,
    session_id  uuid NOT NULL REFERENCES auth_sessions (id) ON DELETE CASCADE,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    used_at     timestamptz
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Failed logins per "username|client address"; old rows are pruned by the login path itself.
CREATE TABLE login_failures (
    key  text NOT NULL,
    at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_key_at ON login_failures (key, at);
