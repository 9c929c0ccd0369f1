-- The owner of warm-pool VMs: VMs booted before anyone asked for them, which `new` hands out.
-- The handle starts with "_", which no user handle may, so nobody can log in as this user or
-- take its handle, and the rows it owns are counted in no user's quota.
INSERT INTO users (handle, created_at) VALUES ('_pool', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'));
