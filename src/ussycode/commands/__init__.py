"""The command layer shared by the SSH REPL, exec mode and (later) the HTTPS API.

Each command is implemented once, returns a `CommandResult` holding JSON-ready data and a text
rendering, and is parsed with shell quoting rules by `ussycode.commands.dispatch`.
"""
