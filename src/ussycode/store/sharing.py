"""Access settings of VM URLs: visibility, the URL's port, people, invitations and share links."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ussycode.errors import Conflict, NotFound
from ussycode.store.db import Store, utc_now

DEFAULT_PORT = 8080


@dataclass(frozen=True)
class VMSharing:
    """Share settings of one VM. A VM that was never changed is private on port 8080."""

    vm_id: int
    public: bool
    port: int
    updated_by: str | None
    updated_at: str | None


@dataclass(frozen=True)
class Share:
    """A person a VM is shared with, or a pending invitation when `user_id` is None."""

    id: int
    vm_id: int
    user_id: int | None
    handle: str | None
    email: str | None
    message: str
    ssh_access: bool
    added_by: str | None
    created_at: str

    @property
    def pending(self) -> bool:
        return self.user_id is None


@dataclass(frozen=True)
class ShareLink:
    """A share link; `label` is the start of its token, which is stored only as a hash."""

    id: int
    vm_id: int
    label: str
    created_by: str | None
    created_at: str


_SHARE_SELECT = (
    "SELECT vm_shares.*, shared.handle AS handle, adder.handle AS added_by_handle FROM vm_shares"
    " LEFT JOIN users AS shared ON shared.id = vm_shares.user_id"
    " LEFT JOIN users AS adder ON adder.id = vm_shares.added_by"
)
_LINK_SELECT = (
    "SELECT share_links.id, share_links.vm_id, share_links.label, share_links.created_at,"
    " users.handle AS created_by_handle FROM share_links"
    " LEFT JOIN users ON users.id = share_links.created_by"
)


def _share(row: sqlite3.Row) -> Share:
    return Share(
        id=row["id"],
        vm_id=row["vm_id"],
        user_id=row["user_id"],
        handle=row["handle"],
        email=row["email"],
        message=row["message"],
        ssh_access=bool(row["ssh_access"]),
        added_by=row["added_by_handle"],
        created_at=row["created_at"],
    )


def _link(row: sqlite3.Row) -> ShareLink:
    return ShareLink(row["id"], row["vm_id"], row["label"], row["created_by_handle"], row["created_at"])


class Sharing:
    """Reads and writes `vm_sharing`, `vm_shares` and `share_links`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # Visibility and port.

    def settings(self, vm_id: int) -> VMSharing:
        row = self.store.execute(
            "SELECT vm_sharing.*, users.handle AS updated_by_handle FROM vm_sharing"
            " LEFT JOIN users ON users.id = vm_sharing.updated_by WHERE vm_id = ?",
            (vm_id,),
        ).fetchone()
        if row is None:
            return VMSharing(vm_id, public=False, port=DEFAULT_PORT, updated_by=None, updated_at=None)
        return VMSharing(
            vm_id, bool(row["public"]), int(row["port"]), row["updated_by_handle"], row["updated_at"]
        )

    def set_public(self, vm_id: int, public: bool, by_user_id: int) -> VMSharing:
        self.store.execute(
            "INSERT INTO vm_sharing (vm_id, public, updated_by, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(vm_id) DO UPDATE SET public = excluded.public,"
            " updated_by = excluded.updated_by, updated_at = excluded.updated_at",
            (vm_id, int(public), by_user_id, utc_now()),
        )
        return self.settings(vm_id)

    def set_port(self, vm_id: int, port: int, by_user_id: int) -> VMSharing:
        self.store.execute(
            "INSERT INTO vm_sharing (vm_id, port, updated_by, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(vm_id) DO UPDATE SET port = excluded.port,"
            " updated_by = excluded.updated_by, updated_at = excluded.updated_at",
            (vm_id, port, by_user_id, utc_now()),
        )
        return self.settings(vm_id)

    # People.

    def shares(self, vm_id: int) -> list[Share]:
        rows = self.store.execute(
            f"{_SHARE_SELECT} WHERE vm_shares.vm_id = ? ORDER BY vm_shares.id", (vm_id,)
        )
        return [_share(row) for row in rows]

    def find_user_share(self, vm_id: int, user_id: int) -> Share | None:
        row = self.store.execute(
            f"{_SHARE_SELECT} WHERE vm_shares.vm_id = ? AND vm_shares.user_id = ?", (vm_id, user_id)
        ).fetchone()
        return _share(row) if row else None

    def find_invitation(self, vm_id: int, email: str) -> Share | None:
        row = self.store.execute(
            f"{_SHARE_SELECT} WHERE vm_shares.vm_id = ? AND vm_shares.email = ?"
            " AND vm_shares.user_id IS NULL",
            (vm_id, email),
        ).fetchone()
        return _share(row) if row else None

    def add_user(
        self, vm_id: int, user_id: int, *, message: str, added_by: int, email: str | None = None
    ) -> Share:
        """Share the VM with a user.

        :raise Conflict: it is already shared with that user.
        """
        try:
            cursor = self.store.execute(
                "INSERT INTO vm_shares (vm_id, user_id, email, message, added_by, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (vm_id, user_id, email, message, added_by, utc_now()),
            )
        except Conflict as exc:
            raise Conflict(f"vm {vm_id} is already shared with user {user_id}") from exc
        return self._get(int(cursor.lastrowid or 0))

    def add_invitation(self, vm_id: int, email: str, *, message: str, added_by: int) -> Share:
        """Invite `email`: the user who verifies that address gets the share.

        :raise Conflict: the address is already invited to this VM.
        """
        try:
            cursor = self.store.execute(
                "INSERT INTO vm_shares (vm_id, email, message, added_by, created_at) VALUES (?, ?, ?, ?, ?)",
                (vm_id, email, message, added_by, utc_now()),
            )
        except Conflict as exc:
            raise Conflict(f"vm {vm_id} already has an invitation for {email}") from exc
        return self._get(int(cursor.lastrowid or 0))

    def remove(self, share_id: int) -> None:
        self.store.execute("DELETE FROM vm_shares WHERE id = ?", (share_id,))

    def set_ssh_access(self, share_id: int, allowed: bool) -> Share:
        self.store.execute("UPDATE vm_shares SET ssh_access = ? WHERE id = ?", (int(allowed), share_id))
        return self._get(share_id)

    def claim_invitations(self, user_id: int, email: str) -> list[Share]:
        """Turn the pending invitations to `email` into shares with `user_id`; return them.

        Call it once `email` is the user's verified address. An invitation to a VM that is
        already shared with the user, or that the user owns, is dropped.
        """
        claimed: list[int] = []
        with self.store.transaction():
            rows = self.store.execute(
                "SELECT vm_shares.id, vm_shares.vm_id, vms.owner_id FROM vm_shares"
                " JOIN vms ON vms.id = vm_shares.vm_id"
                " WHERE vm_shares.email = ? AND vm_shares.user_id IS NULL",
                (email,),
            ).fetchall()
            for row in rows:
                duplicate = self.store.execute(
                    "SELECT 1 FROM vm_shares WHERE vm_id = ? AND user_id = ?", (row["vm_id"], user_id)
                ).fetchone()
                if duplicate is not None or row["owner_id"] == user_id:
                    self.store.execute("DELETE FROM vm_shares WHERE id = ?", (row["id"],))
                    continue
                self.store.execute("UPDATE vm_shares SET user_id = ? WHERE id = ?", (user_id, row["id"]))
                claimed.append(int(row["id"]))
        return [self._get(share_id) for share_id in claimed]

    def _get(self, share_id: int) -> Share:
        row = self.store.execute(f"{_SHARE_SELECT} WHERE vm_shares.id = ?", (share_id,)).fetchone()
        if row is None:
            raise NotFound(f"share {share_id} not found")
        return _share(row)

    # Links.

    def add_link(self, vm_id: int, token_hash: str, label: str, created_by: int) -> ShareLink:
        cursor = self.store.execute(
            "INSERT INTO share_links (vm_id, token_hash, label, created_by, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (vm_id, token_hash, label, created_by, utc_now()),
        )
        return self.get_link(int(cursor.lastrowid or 0))

    def get_link(self, link_id: int) -> ShareLink:
        link = self.find_link_by_id(link_id)
        if link is None:
            raise NotFound(f"share link {link_id} not found")
        return link

    def find_link_by_id(self, link_id: int) -> ShareLink | None:
        row = self.store.execute(f"{_LINK_SELECT} WHERE share_links.id = ?", (link_id,)).fetchone()
        return _link(row) if row else None

    def links(self, vm_id: int) -> list[ShareLink]:
        rows = self.store.execute(
            f"{_LINK_SELECT} WHERE share_links.vm_id = ? ORDER BY share_links.id", (vm_id,)
        )
        return [_link(row) for row in rows]

    def find_link(self, token_hash: str) -> ShareLink | None:
        row = self.store.execute(f"{_LINK_SELECT} WHERE share_links.token_hash = ?", (token_hash,)).fetchone()
        return _link(row) if row else None

    def remove_link(self, link_id: int) -> None:
        """Delete the link; sessions opened through it go with it (ON DELETE CASCADE)."""
        self.store.execute("DELETE FROM share_links WHERE id = ?", (link_id,))

    # Access checks.

    def can_open(self, vm_id: int, user_id: int) -> bool:
        """Return whether the VM is shared with the user (the owner is checked by the caller)."""
        row = self.store.execute(
            "SELECT 1 FROM vm_shares WHERE vm_id = ? AND user_id = ?", (vm_id, user_id)
        ).fetchone()
        return row is not None

    def can_ssh(self, vm_id: int, user_id: int) -> bool:
        """Return whether a person the VM is shared with was also allowed `ssh VM@host`."""
        row = self.store.execute(
            "SELECT 1 FROM vm_shares WHERE vm_id = ? AND user_id = ? AND ssh_access = 1", (vm_id, user_id)
        ).fetchone()
        return row is not None

    def shared_with(self, user_id: int) -> list[tuple[int, Share]]:
        """Return (vm id, share) for every VM shared with the user."""
        rows = self.store.execute(
            f"{_SHARE_SELECT} WHERE vm_shares.user_id = ? ORDER BY vm_shares.id", (user_id,)
        )
        return [(int(row["vm_id"]), _share(row)) for row in rows]
