-- The LLM gateway: users' own provider keys, and requests and tokens per user, provider and day.

-- A user's own key for one provider, encrypted with AES-256-GCM under a key derived from the
-- server's LLM secret. `nonce` is 12 random bytes; the associated data binds the row to
-- "<user_id>:<provider>", so a ciphertext copied to another row does not decrypt. `hint` is the
-- masked form that `llm-key list` shows, such as "sk-...wxyz".
CREATE TABLE llm_keys (
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    provider    TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    hint        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (user_id, provider)
);

-- Counters per user, provider, UTC day (YYYY-MM-DD) and key source: own, platform or routussy.
-- Tokens come from the usage fields of the providers' responses.
CREATE TABLE llm_usage (
    user_id        INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    provider       TEXT NOT NULL,
    day            TEXT NOT NULL,
    source         TEXT NOT NULL,
    requests       INTEGER NOT NULL DEFAULT 0,
    input_tokens   INTEGER NOT NULL DEFAULT 0,
    output_tokens  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, provider, day, source)
);
