-- Data keys of the cipher service, each wrapped (AES-256-GCM, base64) under the master key,
-- which is never stored here.
CREATE TABLE cipher_keys (
    version    BIGINT PRIMARY KEY,
    wrapped    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
