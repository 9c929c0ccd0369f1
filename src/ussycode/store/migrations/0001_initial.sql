-- Users, their SSH keys, VMs, guest images and the VM event log.
CREATE TABLE users (
    id          INTEGER PRIMARY KEY,
    handle      TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);

CREATE TABLE ssh_keys (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    fingerprint  TEXT NOT NULL UNIQUE,
    public_key   TEXT NOT NULL,
    name         TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL
);
CREATE INDEX ssh_keys_user ON ssh_keys(user_id);

CREATE TABLE images (
    name         TEXT PRIMARY KEY,
    recipe_hash  TEXT NOT NULL,
    path         TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE vms (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    owner_id    INTEGER NOT NULL REFERENCES users(id),
    state       TEXT NOT NULL,
    image       TEXT NOT NULL,
    image_path  TEXT NOT NULL,
    cpus        INTEGER NOT NULL,
    memory_mb   INTEGER NOT NULL,
    disk_bytes  INTEGER NOT NULL,
    ip          TEXT NOT NULL UNIQUE,
    mac         TEXT NOT NULL UNIQUE,
    host_keys   TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    started_at  TEXT
);
CREATE INDEX vms_owner ON vms(owner_id);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    vm_id       INTEGER,
    vm_name     TEXT NOT NULL,
    user_id     INTEGER,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL
);
CREATE INDEX events_vm ON events(vm_id);

CREATE TABLE host_facts (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
