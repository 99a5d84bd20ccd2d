-- The access token issued together with each refresh token, by its id (jti): an access token
-- belongs to its refresh token's family, so revoking the family (reuse, RFC 7009 revocation,
-- the user's deletion) makes it inactive too. NULL for tokens issued before this column.
ALTER TABLE refresh_tokens ADD COLUMN access_jti TEXT;
CREATE INDEX refresh_tokens_by_access_jti ON refresh_tokens (access_jti);
