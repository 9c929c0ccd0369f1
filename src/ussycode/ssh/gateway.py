"""The SSH gateway on port 2224: public-key login, sign-up on first use, lobby or VM proxy.

`ssh -p 2224 host` opens the lobby (REPL or one command). `ssh -p 2224 VM@host` opens a session
inside the VM if the key's user owns it or was let in with `share access allow`. An unknown key
registers a new user on its first lobby connection; the SSH key is the identity.
"""

from __future__ import annotations

import itertools
import logging
import secrets

import asyncssh

from ussycode.auth.access import vm_for_ssh
from ussycode.auth.admission import INVITE_PREFIX, Admission, Admitted, Refused
from ussycode.commands.base import Services
from ussycode.errors import Conflict, InvalidInput, RuntimeFailure, UssycodeError
from ussycode.names import ADJECTIVES, NOUNS, check_handle
from ussycode.ssh.forwarding import GuestForwarder, StreamHandler
from ussycode.ssh.keys import fingerprint, public_key_line
from ussycode.ssh.lobby import LobbySession
from ussycode.ssh.proxy import VMProxySession
from ussycode.store import User
from ussycode.vm.state import VMState

log = logging.getLogger(__name__)

_conn_ids = itertools.count(1)
GENERIC_USERNAMES = frozenset({"root", "admin", "user", "ubuntu", "debian", "ussycode", "guest"})
MAX_HANDLE_ATTEMPTS = 3


class GatewayConnection(asyncssh.SSHServer):
    """Per-connection authentication and session routing."""

    def __init__(self, services: Services, admission: Admission | None = None) -> None:
        self.services = services
        self.admission = admission or Admission(services.config, services.store)
        self.admitted: Admitted | None = None
        self.peer_host = "?"
        self._banners: set[str] = set()
        self.conn_id = f"c{next(_conn_ids)}"
        self.username = ""
        self.user: User | None = None
        self.pending_key: asyncssh.SSHKey | None = None
        self.peer = "?"
        self._conn: asyncssh.SSHServerConnection | None = None
        self._forwarder: GuestForwarder | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.peer_host = str(peer[0]) if peer else "?"
        log.info("conn=%s connected from %s", self.conn_id, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._forwarder is not None:
            self._forwarder.close()
        handle = self.user.handle if self.user else "-"
        log.info("conn=%s user=%s disconnected%s", self.conn_id, handle, f": {exc}" if exc else "")

    def begin_auth(self, username: str) -> bool:
        self.username = username
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        outcome = await self.admission.decide(
            login=username,
            fingerprint=fingerprint(key),
            peer=self.peer_host,
            vm_login=self.services.store.find_vm(username) is not None,
            conn_id=self.conn_id,
        )
        if isinstance(outcome, Refused):
            self._send_banner(outcome.message)
            return False
        if outcome.user is not None:
            self.user, self.pending_key = outcome.user, None
            return True
        self.pending_key, self.admitted = key, outcome
        if username.startswith(INVITE_PREFIX):
            # The login name carries the invitation's token: it must not become a handle.
            self.username = ""
        return True

    def _send_banner(self, message: str) -> None:
        """Show `message` to the client before its login fails; OpenSSH prints it unless run with -q."""
        if self._conn is None or message in self._banners:
            return
        self._banners.add(message)
        try:
            self._conn.send_auth_banner(f"ussycode: {message}\r\n")
        except (OSError, asyncssh.Error) as exc:
            log.debug("conn=%s auth banner not sent: %s", self.conn_id, exc)

    def auth_completed(self) -> None:
        handle = self.user.handle if self.user else "(new user)"
        log.info("conn=%s user=%s authenticated as %r", self.conn_id, handle, self.username)

    def session_requested(
        self,
    ) -> tuple[asyncssh.SSHServerChannel[bytes], asyncssh.SSHServerSession[bytes]]:
        assert self._conn is not None
        channel: asyncssh.SSHServerChannel[bytes] = self._conn.create_server_channel(encoding=None)
        vm = self.services.store.find_vm(self.username)
        if vm is not None and self.user is not None:

            async def connect() -> asyncssh.SSHClientConnection:
                # The agent socket exists once the client asked for agent forwarding (ssh -A),
                # which it does before its shell or exec request.
                return await self._connect_vm(agent_path=channel.get_agent_path())

            return channel, VMProxySession(vm.name, connect, self.conn_id)
        return channel, LobbySession(self.services, self._resolve_user, self.conn_id)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> StreamHandler:
        """Relay `ssh -L` channels of a VM login to the destination inside the VM."""
        if self.user is None or self.services.store.find_vm(self.username) is None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "port forwarding works with VM logins: "
                + self.services.config.ssh_command("VM").replace(" VM@", " -L LOCAL:localhost:PORT VM@"),
            )
        if self._forwarder is None:
            self._forwarder = GuestForwarder(self._connect_vm, self.username, self.conn_id)
        return self._forwarder.handler(dest_host, dest_port)

    # VM sessions.

    async def _connect_vm(self, agent_path: str | None = None) -> asyncssh.SSHClientConnection:
        manager = self.services.manager
        assert self.user is not None
        vm = vm_for_ssh(self.services.store, self.user, self.username)
        vm = await manager.wake(vm, reason=f"ssh login by {self.user.handle}")
        if vm.state != VMState.RUNNING:
            command = self.services.config.ssh_command()
            hint = (
                f'run "{command} start {vm.name}" first'
                if vm.state == VMState.STOPPED
                else "wait until it is running and try again"
            )
            raise Conflict(f'vm "{vm.name}" is {vm.state}: {hint}')
        try:
            return await manager.connect_guest(vm, agent_path=agent_path)
        except RuntimeFailure as exc:
            log.warning("conn=%s vm=%s guest connection failed: %s", self.conn_id, vm.name, exc)
            raise RuntimeFailure(f'vm "{vm.name}" is not reachable right now; try again shortly') from exc

    # Sign-up.

    async def _resolve_user(self, session: LobbySession) -> User:
        if self.user is not None:
            return self.user
        key = self.pending_key
        if key is None:
            raise InvalidInput("no public key was offered")
        asks = session.interactive and session.has_pty
        if asks:
            handle = await self._ask_handle(session)
        else:
            handle = self._generate_handle()
        user = self.services.store.create_user(handle, fingerprint(key), public_key_line(key), "first key")
        self.user, self.pending_key = user, None
        self.admission.registered(user, self.admitted, peer=self.peer_host)
        log.info("conn=%s user=%s registered key %s", self.conn_id, handle, fingerprint(key))
        if asks:
            session.write(f"Registered as {handle}. Your SSH key is your login from now on.\n")
        return user

    def _handle_free(self, handle: str) -> bool:
        return self.services.store.find_user_by_handle(handle) is None

    def _generate_handle(self) -> str:
        candidate = self.username.lower()
        if candidate not in GENERIC_USERNAMES:
            try:
                if self._handle_free(check_handle(candidate)):
                    return candidate
            except InvalidInput:
                pass
        for _ in range(50):
            handle = f"{secrets.choice(ADJECTIVES)}-{secrets.choice(NOUNS)}-{secrets.randbelow(1000)}"
            if self._handle_free(handle):
                return handle
        raise RuntimeFailure("could not generate a free handle; try again")

    async def _ask_handle(self, session: LobbySession) -> str:
        suggestion = self._generate_handle()
        session.write("Welcome! This key is new here, so let's create your account.\n")
        for _ in range(MAX_HANDLE_ATTEMPTS):
            answer = await session.prompt(f"Choose a handle [{suggestion}]: ")
            if answer is None:
                raise InvalidInput("sign-up cancelled")
            handle = answer.strip().lower() or suggestion
            try:
                check_handle(handle)
            except UssycodeError as exc:
                session.write(f"error: {exc.message}\n")
                continue
            if not self._handle_free(handle):
                session.write(f'error: the handle "{handle}" is taken, choose another\n')
                continue
            return handle
        raise InvalidInput("sign-up cancelled after 3 invalid handles")


class Gateway:
    """Owns the asyncssh listener."""

    def __init__(self, services: Services, host_key: asyncssh.SSHKey) -> None:
        self.services = services
        self.host_key = host_key
        self.admission = Admission(services.config, services.store)
        self._server: asyncssh.SSHAcceptor | None = None

    async def start(self) -> None:
        host, port = self.services.config.ssh_addr
        try:
            self._server = await asyncssh.create_server(
                lambda: GatewayConnection(self.services, self.admission),
                host or None,
                port,
                server_host_keys=[self.host_key],
                line_editor=False,
                encoding=None,
                allow_scp=False,
                # Only VM logins and `ssh VM` in the REPL use the forwarded agent, passing it on
                # into the VM; the gateway never uses it to log in anywhere.
                agent_forwarding=True,
                x11_forwarding=False,
                login_timeout=60,
                keepalive_interval=30,
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot listen for SSH on {host or '*'}:{port}: {exc.strerror}") from exc
        log.info("ssh gateway listening on %s:%d", host or "*", port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
