-- VM settings of the full command surface, REPL history, the command log and tutorial progress.

-- Settings of a VM beyond its row in `vms`: set by new, tag, comment, resize and cp, and the
-- first-boot setup script with its outcome as the guest reported it. `pending_*` hold CPU and
-- memory changes made while the VM ran; the next boot moves them into `vms`.
CREATE TABLE vm_details (
    vm_id              INTEGER PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
    comment            TEXT NOT NULL DEFAULT '',
    tags               TEXT NOT NULL DEFAULT '[]',
    env                TEXT NOT NULL DEFAULT '{}',
    setup_script       TEXT,
    setup_status       TEXT NOT NULL DEFAULT '',
    setup_exit_status  INTEGER,
    setup_updated_at   TEXT,
    pending_cpus       INTEGER,
    pending_memory_mb  INTEGER,
    copied_from        TEXT
);

-- Lines typed in the REPL, per user, oldest first by id.
CREATE TABLE repl_history (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    line        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX repl_history_user ON repl_history(user_id, id);

-- Commands a user ran from any surface (REPL, exec mode, API), by name only, for the tutorial.
CREATE TABLE command_runs (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    command     TEXT NOT NULL,
    succeeded   INTEGER NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX command_runs_user ON command_runs(user_id, id);

-- Tutorial progress: the current lesson, the lessons done (JSON list) and what the lessons
-- remember, such as the VM the user made in lesson 1 (JSON object).
CREATE TABLE tutorial_progress (
    user_id            INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    current            INTEGER NOT NULL DEFAULT 1,
    completed          TEXT NOT NULL DEFAULT '[]',
    context            TEXT NOT NULL DEFAULT '{}',
    lesson_started_at  TEXT NOT NULL,
    updated_at         TEXT NOT NULL
);
