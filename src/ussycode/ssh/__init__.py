"""The SSH gateway: the lobby REPL, exec mode and the proxy into VMs."""
