-- Security events (logins, token issue/refresh/revoke, refresh-token reuse, admin changes),
-- append-only, queryable through the admin API.
CREATE TABLE audit_events (
    id        TEXT PRIMARY KEY,
    at        BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    subject   TEXT NOT NULL DEFAULT '',
    client_id TEXT NOT NULL DEFAULT '',
    source    TEXT NOT NULL DEFAULT '',
    detail    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_by_time ON audit_events (at);
CREATE INDEX audit_events_by_subject ON audit_events (subject, at);
