-- Trust tiers, per-user limit overrides, suspensions and invitations.

-- A user's trust tier and suspension. A user without a row has the server's default tier.
CREATE TABLE user_trust (
    user_id        INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    tier           TEXT NOT NULL,
    suspended_at   TEXT,
    suspended_why  TEXT NOT NULL DEFAULT '',
    updated_at     TEXT NOT NULL
);

-- Limits set for one user, replacing the value of their tier. `key` is vms, cpus, memory_mb,
-- disk_bytes or running.
CREATE TABLE user_limits (
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       INTEGER NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
);

-- Invitations of `--admission invite`: a token that lets unknown keys register. Only the
-- token's SHA-256 is stored. Times that code compares are Unix seconds.
CREATE TABLE invitations (
    id          INTEGER PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    label       TEXT NOT NULL,
    tier        TEXT NOT NULL,
    uses_left   INTEGER NOT NULL,
    created_by  INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);
