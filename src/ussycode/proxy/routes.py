"""Turns VM changes and sharing changes into Caddy routes: the VM manager's listener."""

from __future__ import annotations

from ussycode.config import Config
from ussycode.proxy.caddy import Caddy
from ussycode.proxy.caddy_config import VMRoute
from ussycode.store import VM, Store
from ussycode.store.sharing import Sharing
from ussycode.vm.state import VMState


class CaddyRoutes:
    """Keeps each VM's Caddy route in line with its state and its share settings."""

    def __init__(self, config: Config, caddy: Caddy, store: Store) -> None:
        self.config = config
        self.caddy = caddy
        self.store = store

    def route(self, vm: VM) -> VMRoute:
        settings = Sharing(self.store).settings(vm.id)
        upstream = f"{vm.ip}:{settings.port}" if vm.state == VMState.RUNNING else None
        public = settings.public
        if vm.state in (VMState.SUSPENDED, VMState.SUSPENDING):
            # Every request then passes the auth endpoint, which resumes the VM before it
            # answers, so the request reaches the app once the VM runs again.
            upstream = f"{vm.ip}:{settings.port}"
            public = False
        start = f"{self.config.ssh_command()} start {vm.name}"
        return VMRoute(name=vm.name, upstream=upstream, state=vm.state, start_command=start, public=public)

    async def vm_changed(self, vm: VM) -> None:
        """Replace the VM's route; also called after `share` changes its visibility or port."""
        await self.caddy.set_route(self.route(vm))

    async def vm_removed(self, name: str) -> None:
        await self.caddy.remove_route(name)
