-- Server-side sessions (when no Redis is configured). The session id itself is never stored:
-- id_hash is its SHA-256; handle (a prefix of the hash) names it in lists and revocations.
CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY,
    handle      TEXT NOT NULL,
    user_name   TEXT NOT NULL,
    source      TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    last_access BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    idle_secs   BIGINT NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_name);
