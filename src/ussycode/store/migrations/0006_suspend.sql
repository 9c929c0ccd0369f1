-- Suspend and resume: each VM's idle timeout and the size of its saved state.
CREATE TABLE vm_suspend (
    vm_id         INTEGER PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
    -- Seconds without use before the VM is suspended; NULL means the server's idle_timeout
    -- and 0 means never.
    idle_seconds  INTEGER,
    -- Bytes of the saved memory and device state while the VM is suspended, else 0.
    state_bytes   INTEGER NOT NULL DEFAULT 0
);
