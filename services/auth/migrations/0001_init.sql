-- quartet-auth schema, version 1. Written in the SQL that SQLite and PostgreSQL share:
-- TEXT and BIGINT only (flags are 0/1, times are seconds since the epoch, keys are base64).
CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    disabled      BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL
);

CREATE TABLE roles (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT ''
);

CREATE TABLE role_permissions (
    role       TEXT NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    permission TEXT NOT NULL,
    PRIMARY KEY (role, permission)
);

CREATE TABLE user_roles (
    user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    role      TEXT NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    PRIMARY KEY (user_name, role)
);

CREATE TABLE user_permissions (
    user_name  TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    permission TEXT NOT NULL,
    PRIMARY KEY (user_name, permission)
);

-- OAuth clients. A NULL secret_hash is a public client. grant_types, scopes and permissions
-- are space-separated; permissions are what a client_credentials token carries.
CREATE TABLE oauth_clients (
    client_id    TEXT PRIMARY KEY,
    secret_hash  TEXT,
    grant_types  TEXT NOT NULL,
    scopes       TEXT NOT NULL DEFAULT '',
    permissions  TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL
);

-- Refresh tokens are stored by the SHA-256 of their value. A family is one login's chain of
-- rotations: presenting a used token revokes the whole family.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family     TEXT NOT NULL,
    user_name  TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    scope      TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    revoked_at BIGINT
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family);

-- Access tokens revoked before their expiry (RFC 7009), by token id.
CREATE TABLE revoked_access_tokens (
    jti        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    kid        TEXT PRIMARY KEY,
    pkcs8      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
