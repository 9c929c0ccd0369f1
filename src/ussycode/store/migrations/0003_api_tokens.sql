-- API tokens: shortened usy0 tokens and server-minted API keys, both reached as usy1.<id>.
CREATE TABLE api_tokens (
    id            INTEGER PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind          TEXT NOT NULL CHECK (kind IN ('short', 'key')),
    token_hash    TEXT NOT NULL UNIQUE,
    usy0          TEXT,
    label         TEXT NOT NULL DEFAULT '',
    vm_name       TEXT,
    cmds          TEXT,
    expires_at    INTEGER,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT,
    revoked_at    TEXT
);
CREATE INDEX api_tokens_user ON api_tokens(user_id);

ALTER TABLE ssh_keys ADD COLUMN last_used_at TEXT;
