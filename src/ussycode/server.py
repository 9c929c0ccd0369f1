"""`ussycode serve`: wire the store, network, runtime, VM manager, metadata, API, Caddy and gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from ussycode.api.admin_panel import AdminPanel
from ussycode.api.exec import ExecEndpoint
from ussycode.api.server import APIServer
from ussycode.auth.api_tokens import TokenVerifier
from ussycode.auth.audit import DeniedRequestLog
from ussycode.auth.ratelimit import RateLimiter
from ussycode.commands.base import Services
from ussycode.config import Config
from ussycode.errors import ConfigError, RuntimeFailure
from ussycode.metadata.server import MetadataService
from ussycode.proxy.caddy import Caddy
from ussycode.proxy.routes import CaddyRoutes
from ussycode.ssh.gateway import Gateway
from ussycode.ssh.keys import load_or_create_key, public_key_line
from ussycode.store import Store
from ussycode.store.audit import AuditLog
from ussycode.vm.image import find_image, list_images
from ussycode.vm.kvm import probe_kvm
from ussycode.vm.manager import VMManager
from ussycode.vm.network import Network
from ussycode.vm.pool import WarmPool
from ussycode.vm.qemu import QemuRuntime

log = logging.getLogger(__name__)

KVM_FACT = "kvm_works"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"


async def choose_accel(config: Config, store: Store) -> str:
    """Return "kvm" or "tcg": the setting, or a KVM probe cached once per host boot."""
    if config.accel != "auto":
        return config.accel
    cache_key = f"{KVM_FACT}:{_boot_id()}"
    cached = store.get_fact(cache_key)
    if cached is not None:
        return "kvm" if cached == "yes" else "tcg"
    image = find_image(config.image_dir, config.image)
    if image is None:
        log.warning("no image to probe KVM with; using TCG until an image exists")
        return "tcg"
    works = await probe_kvm(qemu_binary=config.qemu_bin, kernel=image.kernel)
    store.set_fact(cache_key, "yes" if works else "no")
    log.info("KVM probe: %s", "guests run under KVM" if works else "KVM unusable, using TCG")
    return "kvm" if works else "tcg"


def register_images(config: Config, store: Store) -> None:
    for manifest in list_images(config.image_dir):
        store.upsert_image(manifest.name, manifest.recipe_hash, str(manifest.directory))


async def serve(config: Config) -> None:
    """Run the platform until SIGINT or SIGTERM; VMs keep running across a restart."""
    if os.geteuid() != 0:
        raise ConfigError("ussycode serve must run as root: it manages a bridge, TAP devices and nftables")
    # The store, disks and logs hold users' data, so nothing the server creates is readable by others.
    os.umask(0o027)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.data_dir.chmod(0o750)
    (config.data_dir / "logs").mkdir(exist_ok=True)
    log.info("starting: domain=%s data_dir=%s", config.domain, config.data_dir)

    store = Store(config.data_dir / "ussycode.db")
    register_images(config, store)
    if find_image(config.image_dir, config.image) is None:
        log.warning(
            'default image "%s" not found in %s: run "ussycode image build"',
            config.image,
            config.image_dir,
        )
    host_key = load_or_create_key(config.data_dir / "keys" / "ssh_host_ed25519_key", "ussycode-gateway-host")
    gateway_key = load_or_create_key(config.data_dir / "keys" / "gateway_vm_ed25519_key", "ussycode-gateway")

    accel = await choose_accel(config, store)
    runtime = QemuRuntime(binary=config.qemu_bin, accel=accel)
    network = Network(
        bridge=config.bridge,
        subnet=config.subnet,
        metadata_port=config.metadata_addr[1],
        host_ports=(config.ssh_addr[1], config.https_addr[1], config.http_addr[1]),
    )
    await network.setup()

    api_host, api_port = config.api_addr
    auth_socket = config.data_dir / "auth.sock"
    caddy = Caddy(
        binary=config.caddy_bin,
        data_dir=config.data_dir,
        domain=config.domain,
        https_addr=config.https_addr,
        http_addr=config.http_addr,
        tls_mode=config.tls_mode,
        acme_email=config.acme_email,
        api_upstream=f"{api_host or '127.0.0.1'}:{api_port}",
        ask_url=f"http://{api_host or '127.0.0.1'}:{api_port}/__ussycode/tls-ask",
        auth_socket=auth_socket,
    )
    routes = CaddyRoutes(config, caddy, store)
    manager = VMManager(
        config=config,
        store=store,
        network=network,
        runtime=runtime,
        gateway_key=gateway_key,
        listener=routes,
    )
    metadata = MetadataService(
        config=config,
        store=store,
        manager=manager,
        gateway_public_key=public_key_line(gateway_key, "ussycode-gateway"),
    )
    pool = WarmPool(manager, metadata.document)
    manager.pool = pool
    services = Services(config=config, store=store, manager=manager)
    verifier = TokenVerifier(store, config.domain)
    limiter = RateLimiter(config.api_rate, 2 * config.api_rate)
    denied = DeniedRequestLog(AuditLog(store))
    admin_panel = AdminPanel(config=config, store=store, manager=manager, denied=denied)
    api = APIServer(
        config=config,
        store=store,
        exec_endpoint=ExecEndpoint(services, verifier, limiter),
        admin_panel=admin_panel,
        denied=denied,
        auth_socket=auth_socket,
    )
    api.forward_auth.on_request = manager.note_request
    api.forward_auth.on_allow = manager.request_allowed
    gateway = Gateway(services, host_key)

    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_event.set)

    supervisor: asyncio.Task[None] | None = None
    try:
        await metadata.start()
        await api.start()
        await admin_panel.start()
        await caddy.start([routes.route(vm) for vm in store.list_vms() if not manager.is_pooled(vm)])
        await manager.reconcile()
        await pool.start()
        await gateway.start()
        supervisor = asyncio.create_task(manager.supervise())
        log.info(
            "ready: %s, https://%s (root CA %s), runtime qemu/%s",
            config.ssh_command(),
            config.domain,
            caddy.root_ca_path,
            accel,
        )
        await stop_event.wait()
        log.info("stopping (VMs keep running and are found again on the next start)")
    finally:
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        await gateway.stop()
        await pool.close()
        await manager.close()
        with contextlib.suppress(RuntimeFailure):
            await caddy.stop()
        await admin_panel.stop()
        await api.stop()
        await metadata.stop()
        store.close()
        log.info("stopped")
