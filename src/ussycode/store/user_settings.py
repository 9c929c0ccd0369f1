"""Per-user settings (`settings` command): a fixed set of keys, each with a default."""

from __future__ import annotations

from dataclasses import dataclass

from ussycode.errors import InvalidInput
from ussycode.store.db import Store, utc_now

AGENT_ON_LOGIN = "agent-on-login"


@dataclass(frozen=True)
class UserSetting:
    """A setting users can change: its key, what it does, its allowed and default values, and
    when a change takes effect."""

    key: str
    summary: str
    choices: tuple[str, ...]
    default: str
    takes_effect: str


SETTINGS = {
    AGENT_ON_LOGIN: UserSetting(
        AGENT_ON_LOGIN,
        "start the coding agent pi when you log into a VM with a terminal",
        ("on", "off"),
        "on",
        # The VM reads it from its metadata at boot.
        "VMs apply it at their next start",
    ),
}


def check_setting(key: str, value: str) -> UserSetting:
    """Return the setting `key` if `value` is one of its choices.

    :raise InvalidInput: unknown key or a value that is not one of the choices.
    """
    setting = SETTINGS.get(key)
    if setting is None:
        raise InvalidInput(f'unknown setting "{key}": the settings are {", ".join(sorted(SETTINGS))}')
    if value not in setting.choices:
        raise InvalidInput(f'invalid value "{value}" for {key}: use {" or ".join(setting.choices)}')
    return setting


class UserSettings:
    """Reads and writes `user_settings`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, user_id: int, key: str) -> str:
        """Return the user's value of setting `key`, or its default."""
        row = self.store.execute(
            "SELECT value FROM user_settings WHERE user_id = ? AND key = ?", (user_id, key)
        ).fetchone()
        value = str(row["value"]) if row else SETTINGS[key].default
        # A value that an older version allowed falls back to the default.
        return value if value in SETTINGS[key].choices else SETTINGS[key].default

    def all(self, user_id: int) -> dict[str, str]:
        """Return every setting of the user, defaults included, by key."""
        return {key: self.get(user_id, key) for key in sorted(SETTINGS)}

    def set(self, user_id: int, key: str, value: str) -> None:
        """Check and store the user's `value` for setting `key`.

        :raise InvalidInput: unknown key or a value that is not one of the choices.
        """
        check_setting(key, value)
        self.store.execute(
            "INSERT INTO user_settings (user_id, key, value, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at",
            (user_id, key, value, utc_now()),
        )
