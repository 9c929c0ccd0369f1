"""An LLM gateway on loopback with a provider stand-in, a store with two users and their VMs.

Each VM has a loopback address (127.0.0.2 for alice's, 127.0.0.3 for bob's), and the client binds
that address as its source, so the gateway identifies VMs by source address as it does for real
guests, without a network namespace.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yarl
from aiohttp import web

from tests.llm.provider_standin import Standin
from ussycode import config
from ussycode.llm.gateway import LLMGateway
from ussycode.store import VM, Store, User

ALICE_IP, BOB_IP, STRANGER_IP = "127.0.0.2", "127.0.0.3", "127.0.0.9"
ALICE_FP, BOB_FP = "SHA256:" + "A" * 43, "SHA256:" + "B" * 43


def load_config(environ: dict[str, str]) -> config.Config:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.load(parser.parse_args([]), {"USSYCODE_ENV_FILE": "/nonexistent.env", **environ})


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Start `app` on a free loopback port; return its runner and base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


@dataclass
class Stack:
    store: Store
    config: config.Config
    gateway: LLMGateway
    standin: Standin
    standin_url: str
    url: str
    alice: User
    bob: User
    alice_vm: VM
    bob_vm: VM

    def session(self, source_ip: str) -> aiohttp.ClientSession:
        """Return a client whose requests come from `source_ip`, as a VM's would."""
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source_ip, 0)))

    async def request(
        self,
        source_ip: str,
        provider: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        method: str = "POST",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        async with (
            self.session(source_ip) as client,
            client.request(
                method, f"{self.url}/gateway/llm/{provider}/{path}", json=body, headers=headers
            ) as response,
        ):
            data = await response.read()
            return Reply(response.status, dict(response.headers), data)

    async def raw_request(self, source_ip: str, path: str, *, method: str = "POST") -> Reply:
        """Send `path` after /gateway/llm/ exactly as given, without normalising or quoting it."""
        url = yarl.URL(f"{self.url}/gateway/llm/{path}", encoded=True)
        async with self.session(source_ip) as client, client.request(method, url, json={}) as response:
            return Reply(response.status, dict(response.headers), await response.read())


@asynccontextmanager
async def gateway_stack(
    tmp_path: Path, environ: dict[str, str] | None = None, *, gated: bool = False
) -> AsyncIterator[Stack]:
    """Yield a running stack; "{standin}" in a setting's value is replaced by the stand-in's URL."""
    standin = Standin(gated=gated)
    standin_runner, standin_url = await serve(standin.app())
    settings = {
        "USSYCODE_DATA_DIR": str(tmp_path / "data"),
        "USSYCODE_LLM_OPENAI_URL": standin_url,
        "USSYCODE_LLM_ANTHROPIC_URL": standin_url,
        "USSYCODE_LLM_FIREWORKS_URL": standin_url,
        "USSYCODE_LLM_OPENROUTER_URL": standin_url,
    }
    for key, value in (environ or {}).items():
        settings[key] = value.replace("{standin}", standin_url)
    cfg = load_config(settings)
    store = Store(tmp_path / "store.db")
    alice = store.create_user("alice", ALICE_FP, "ssh-ed25519 AAAAalice")
    bob = store.create_user("bob", BOB_FP, "ssh-ed25519 AAAAbob")
    vms = []
    for number, (owner, ip) in enumerate([(alice, ALICE_IP), (bob, BOB_IP)], start=1):
        vms.append(
            store.create_vm(
                name=f"{owner.handle}-vm",
                owner_id=owner.id,
                state="running",
                image="ussyuntu",
                image_path="/nonexistent",
                cpus=1,
                memory_mb=512,
                disk_bytes=1024**3,
                ip=ip,
                mac=f"52:54:00:00:00:0{number}",
            )
        )
    gateway = LLMGateway(
        config=cfg, store=store, vm_for=lambda request: store.find_vm_by_ip(request.remote or "")
    )
    app = web.Application()
    gateway.add_routes(app)
    runner, url = await serve(app)
    try:
        yield Stack(store, cfg, gateway, standin, standin_url, url, alice, bob, vms[0], vms[1])
    finally:
        standin.release.set()
        standin.usage_release.set()
        await runner.cleanup()
        await gateway.close()
        await standin_runner.cleanup()
        store.close()
