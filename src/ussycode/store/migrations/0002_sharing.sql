-- Sharing of VM URLs, browser sessions, login links and the audit log.
-- Times that code compares (expires_at) are Unix seconds; times shown to people are ISO 8601 UTC.

-- A user's email address. Only a verified address matches invitations made by email, and a
-- verified address belongs to one user at most.
CREATE TABLE user_emails (
    user_id     INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    email       TEXT NOT NULL,
    verified    INTEGER NOT NULL DEFAULT 0,
    updated_at  TEXT NOT NULL
);
CREATE INDEX user_emails_email ON user_emails(email);
CREATE UNIQUE INDEX user_emails_verified ON user_emails(email) WHERE verified = 1;

-- How a VM's URL is served. A VM without a row is private and serves port 8080.
CREATE TABLE vm_sharing (
    vm_id       INTEGER PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
    public      INTEGER NOT NULL DEFAULT 0,
    port        INTEGER NOT NULL DEFAULT 8080,
    updated_by  INTEGER REFERENCES users(id) ON DELETE SET NULL,
    updated_at  TEXT NOT NULL
);

-- People a VM is shared with: a user, or a pending invitation (user_id NULL) to an email address.
CREATE TABLE vm_shares (
    id          INTEGER PRIMARY KEY,
    vm_id       INTEGER NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    user_id     INTEGER REFERENCES users(id) ON DELETE CASCADE,
    email       TEXT,
    message     TEXT NOT NULL DEFAULT '',
    ssh_access  INTEGER NOT NULL DEFAULT 0,
    added_by    INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL,
    CHECK (user_id IS NOT NULL OR email IS NOT NULL)
);
CREATE UNIQUE INDEX vm_shares_user ON vm_shares(vm_id, user_id) WHERE user_id IS NOT NULL;
CREATE UNIQUE INDEX vm_shares_invitation ON vm_shares(vm_id, email) WHERE user_id IS NULL;
CREATE INDEX vm_shares_pending_email ON vm_shares(email) WHERE user_id IS NULL;

-- Share links: anyone with the token gets access to the VM. Only the token's SHA-256 is stored.
CREATE TABLE share_links (
    id          INTEGER PRIMARY KEY,
    vm_id       INTEGER NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    label       TEXT NOT NULL,
    created_by  INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX share_links_vm ON share_links(vm_id);

-- One-time login links printed by the `browser` command.
CREATE TABLE login_links (
    token_hash  TEXT PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);

-- Browser sessions, each valid on exactly one host: the main domain (a login) or one VM host
-- (made from a login through a handoff, or from a share link).
CREATE TABLE sessions (
    id          INTEGER PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    host        TEXT NOT NULL,
    user_id     INTEGER REFERENCES users(id) ON DELETE CASCADE,
    link_id     INTEGER REFERENCES share_links(id) ON DELETE CASCADE,
    parent_id   INTEGER REFERENCES sessions(id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    CHECK (user_id IS NOT NULL OR link_id IS NOT NULL)
);
CREATE INDEX sessions_parent ON sessions(parent_id);
CREATE INDEX sessions_link ON sessions(link_id);
CREATE INDEX sessions_user ON sessions(user_id);
CREATE INDEX sessions_expiry ON sessions(expires_at);

-- One-time codes that carry a login from the main domain to one VM host.
CREATE TABLE login_handoffs (
    code_hash   TEXT PRIMARY KEY,
    session_id  INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    host        TEXT NOT NULL,
    next_path   TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);

-- Changes to sharing, logins and denied requests. actor_id has no foreign key so that entries
-- outlive the user.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY,
    actor_id    INTEGER,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL
);
CREATE INDEX audit_log_target ON audit_log(target);
CREATE INDEX audit_log_actor ON audit_log(actor_id);
