"""The SQLite store: schema migrations and typed access to users, keys, VMs and events."""

from ussycode.store.db import Store
from ussycode.store.models import VM, Event, Image, SSHKey, User

__all__ = ["VM", "Event", "Image", "SSHKey", "Store", "User"]
