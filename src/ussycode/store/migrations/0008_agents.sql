-- Coding agents in VMs: the first prompt of `new --prompt`, and per-user settings such as
-- whether a terminal login to a VM starts an agent.

-- The prompt the VM's agent starts with at its first boot; NULL without `--prompt`.
ALTER TABLE vm_details ADD COLUMN agent_prompt TEXT;

-- A user's choices among the settings defined in ussycode.store.user_settings. A user without
-- a row for a key has that setting's default.
CREATE TABLE user_settings (
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
);
