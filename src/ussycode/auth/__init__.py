"""Browser logins, sessions, share links and the access decision for VM URLs."""
