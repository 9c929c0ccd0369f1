"""The platform's own HTTP endpoints behind Caddy on the main domain."""
