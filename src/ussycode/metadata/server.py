"""HTTP metadata service: answers each VM with its own configuration, identified by source address.

VMs reach it at http://169.254.169.254/ through an nftables DNAT rule to `--metadata-addr`. A
request from an address that belongs to no VM gets 403. Endpoints (see docs/openapi/metadata.yaml):

- EC2-style text: /latest/meta-data/{hostname,instance-id,local-ipv4,public-keys/,public-keys/0/openssh-key}
- JSON: GET /v1/vm; POST /v1/host-keys where the guest reports its sshd host keys, and POST
  /v1/setup-log where it reports the state and output of the first-boot setup script.
- The LLM gateway, /gateway/llm/<provider>/<path> (see ussycode.llm.gateway).
"""

from __future__ import annotations

import logging
from typing import Any

import asyncssh
from aiohttp import web

from ussycode.config import Config
from ussycode.errors import RuntimeFailure
from ussycode.llm.env import llm_environment
from ussycode.llm.gateway import LLMGateway
from ussycode.store import VM, Store
from ussycode.store.user_settings import AGENT_ON_LOGIN, UserSettings
from ussycode.vm.manager import VMManager

log = logging.getLogger(__name__)

MAX_HOST_KEYS = 8
MAX_BODY_BYTES = 64 * 1024
SETUP_STATUSES = ("running", "succeeded", "failed")


def error_response(status: int, code: str, message: str) -> web.Response:
    """Return the one error body shape of the platform's HTTP services."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class MetadataService:
    def __init__(self, *, config: Config, store: Store, manager: VMManager, gateway_public_key: str) -> None:
        self.config = config
        self.store = store
        self.manager = manager
        self.gateway_public_key = gateway_public_key
        self.llm = LLMGateway(config=config, store=store, vm_for=self._vm_for)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/v1/vm", self.vm_document)
        app.router.add_post("/v1/host-keys", self.host_keys)
        app.router.add_post("/v1/setup-log", self.setup_log)
        app.router.add_get("/latest/meta-data/", self.ec2_index)
        app.router.add_get("/latest/meta-data/hostname", self.ec2_hostname)
        app.router.add_get("/latest/meta-data/instance-id", self.ec2_instance_id)
        app.router.add_get("/latest/meta-data/local-ipv4", self.ec2_local_ipv4)
        app.router.add_get("/latest/meta-data/public-keys/", self.ec2_public_keys)
        app.router.add_get("/latest/meta-data/public-keys/0/openssh-key", self.ec2_openssh_key)
        # The gateway reads request bodies itself, with its own size limit.
        self.llm.add_routes(app)
        return app

    async def start(self) -> None:
        host, port = self.config.metadata_addr
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or None, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot listen for metadata on {host or '*'}:{port}: {exc.strerror}"
            ) from exc
        log.info("metadata service listening on %s:%d", host or "*", port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.llm.close()

    # Identity.

    def _vm_for(self, request: web.Request) -> VM | None:
        remote = request.remote or ""
        return self.store.find_vm_by_ip(remote)

    def hostname(self, vm: VM) -> str:
        """Return the VM's hostname: its name, or `pool-<id>` for a warm-pool VM, whose name is no
        valid hostname. sudo in the guest resolves the hostname, which must be in /etc/hosts."""
        return f"pool-{vm.id}" if self.manager.is_pooled(vm) else vm.name

    def instance_id(self, vm: VM) -> str:
        return f"vm-{vm.id:08d}"

    def ssh_keys(self, vm: VM) -> list[str]:
        keys = [key.public_key for key in self.store.list_keys(vm.owner_id)]
        return [*keys, self.gateway_public_key]

    def environment(self, vm: VM) -> dict[str, str]:
        """Return the VM's environment: the LLM gateway's variables, then the VM's `new --env`
        variables, which may replace them, then the platform's, which take precedence."""
        agent_on_login = UserSettings(self.store).get(vm.owner_id, AGENT_ON_LOGIN)
        return {
            **llm_environment(self.config, self.store, vm),
            **self.manager.details.get(vm.id).env,
            "USSYCODE_VM_NAME": vm.name,
            "USSYCODE_PUBLIC_DOMAIN": self.config.domain,
            "USSYCODE_PUBLIC_URL": self.config.vm_https_url(vm.name).rstrip("/"),
            # Read by the image's login script: "0" keeps a terminal login from starting pi.
            "USSYCODE_AGENT_ON_LOGIN": "1" if agent_on_login == "on" else "0",
        }

    def document(self, vm: VM) -> dict[str, Any]:
        owner = self.store.get_user(vm.owner_id)
        document = {
            "name": vm.name,
            "hostname": self.hostname(vm),
            "instance_id": self.instance_id(vm),
            "owner": owner.handle,
            "local_ipv4": vm.ip,
            "ssh_keys": self.ssh_keys(vm),
            "env": self.environment(vm),
        }
        details = self.manager.details.get(vm.id)
        if details.setup_script is not None:
            document["setup_script"] = details.setup_script
        # The guest sends it once, at the first boot that receives it.
        if details.agent_prompt is not None:
            document["agent_prompt"] = details.agent_prompt
        return document

    # Handlers.

    async def vm_document(self, request: web.Request) -> web.Response:
        vm = self._vm_for(request)
        if vm is None:
            return self._unknown(request)
        log.info("vm=%s fetched its metadata", vm.name)
        return web.json_response(self.document(vm))

    async def host_keys(self, request: web.Request) -> web.Response:
        vm = self._vm_for(request)
        if vm is None:
            return self._unknown(request)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return error_response(
                400, "invalid_input", 'body must be JSON: {"keys": ["ssh-ed25519 AAAA..."]}'
            )
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list) or not keys or len(keys) > MAX_HOST_KEYS:
            return error_response(
                400, "invalid_input", f'"keys" must be a list of 1 to {MAX_HOST_KEYS} public keys'
            )
        checked = []
        for line in keys:
            if not isinstance(line, str):
                return error_response(400, "invalid_input", "each key must be a string")
            try:
                key = asyncssh.import_public_key(line.strip())
            except (asyncssh.KeyImportError, ValueError):
                return error_response(400, "invalid_input", f"not an OpenSSH public key: {line[:40]!r}")
            checked.append(key.export_public_key("openssh").decode().strip())
        self.manager.record_host_keys(vm, checked)
        return web.json_response({"accepted": len(checked)})

    async def setup_log(self, request: web.Request) -> web.Response:
        """Store the state and output of the VM's setup script, for `vm-logs`."""
        vm = self._vm_for(request)
        if vm is None:
            return self._unknown(request)
        usage = '{"status": "running|succeeded|failed", "exit_status": 0, "output": "..."}'
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return error_response(400, "invalid_input", f"body must be JSON: {usage}")
        if not isinstance(body, dict):
            return error_response(400, "invalid_input", f"body must be a JSON object: {usage}")
        status = body.get("status")
        exit_status = body.get("exit_status")
        output = body.get("output", "")
        if status not in SETUP_STATUSES:
            return error_response(
                400, "invalid_input", f'"status" must be one of {", ".join(SETUP_STATUSES)}'
            )
        if exit_status is not None and (not isinstance(exit_status, int) or isinstance(exit_status, bool)):
            return error_response(400, "invalid_input", '"exit_status" must be an integer or null')
        if not isinstance(output, str):
            return error_response(400, "invalid_input", '"output" must be a string')
        path = self.manager.setup_log_path(vm)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(output)
        self.manager.details.set_setup_status(vm.id, status, exit_status)
        log.info("vm=%s setup script %s exit_status=%s", vm.name, status, exit_status)
        return web.json_response({"accepted": True})

    def _unknown(self, request: web.Request) -> web.Response:
        log.warning("metadata request from unknown address %s for %s", request.remote, request.path)
        return error_response(403, "permission_denied", "this address belongs to no VM")

    async def _text(self, request: web.Request, field: str) -> web.Response:
        vm = self._vm_for(request)
        if vm is None:
            return self._unknown(request)
        values = {
            "hostname": self.hostname(vm),
            "instance-id": self.instance_id(vm),
            "local-ipv4": vm.ip,
            "openssh-key": "\n".join(self.ssh_keys(vm)),
            "public-keys": "0=ussycode",
            "index": "hostname\ninstance-id\nlocal-ipv4\npublic-keys/",
        }
        return web.Response(text=values[field] + "\n", content_type="text/plain")

    async def ec2_index(self, request: web.Request) -> web.Response:
        return await self._text(request, "index")

    async def ec2_hostname(self, request: web.Request) -> web.Response:
        return await self._text(request, "hostname")

    async def ec2_instance_id(self, request: web.Request) -> web.Response:
        return await self._text(request, "instance-id")

    async def ec2_local_ipv4(self, request: web.Request) -> web.Response:
        return await self._text(request, "local-ipv4")

    async def ec2_public_keys(self, request: web.Request) -> web.Response:
        return await self._text(request, "public-keys")

    async def ec2_openssh_key(self, request: web.Request) -> web.Response:
        return await self._text(request, "openssh-key")
