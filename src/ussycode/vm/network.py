"""The VM network: one bridge, a TAP device per VM, and the nftables rules around them.

Every VM gets a fixed IPv4 address in one subnet; the bridge takes the subnet's first host
address and is each VM's gateway. Commands (`ip`, `bridge`, `nft`) act on the network namespace
of the calling thread, so the server may run in a namespace of its own.

What the rules enforce:

- VMs reach the outside world through masquerade on any interface except the bridge.
- TCP to 169.254.169.254:80 from a VM is redirected (DNAT) to the metadata service on
  `bridge_ip:metadata_port`, which receives the VM's own source address.
- VMs cannot reach each other: every VM port on the bridge is isolated (`bridge link set
  ... isolated on`, so the bridge forwards nothing between two such ports), and routed traffic
  that would enter and leave through the bridge is dropped.
- Connections from elsewhere into the VM subnet are dropped unless they belong to a connection
  that a VM opened.
- A VM port accepts only IPv4 and ARP frames whose source MAC and IPv4 address are the VM's
  own. Each port has a chain `port-<ifname>` in table `bridge ussycode`, reached through the
  verdict map `ports`, so re-running `setup` keeps the rules of ports that exist.

- From a VM, the host accepts only replies, ping, the DNAT-ed metadata connection and new
  connections to `host_ports` (the SSH gateway and Caddy); other host services are unreachable.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Collection
from typing import Any

from ussycode import proc
from ussycode.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    RuntimeFailure,
)

log = logging.getLogger(__name__)

TABLE = "ussycode"
METADATA_IP = ipaddress.IPv4Address("169.254.169.254")
TAP_PREFIX = "ussyt"
MAC_PREFIX = "52:54:00"

# Linux limits interface names to 15 bytes (IFNAMSIZ - 1). The character set is narrower than
# the kernel's so that names need no quoting in nft scripts.
_IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_MAC_RE = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")


def _check_ifname(name: str, what: str) -> str:
    if not _IFNAME_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid {what} name {name!r}: use 1 to 15 letters, digits, '.', '-' or '_',"
            " starting with a letter or digit"
        )
    return name


def _check_mac(mac: str) -> str:
    lowered = mac.lower()
    if not _MAC_RE.fullmatch(lowered):
        raise InvalidInput(f"invalid MAC address {mac!r}: expected six hex pairs such as 52:54:00:00:00:02")
    if int(lowered[:2], 16) & 1:
        raise InvalidInput(f"invalid MAC address {mac!r}: a multicast address cannot be a VM's")
    return lowered


class Network:
    """The bridge, TAP devices and nftables rules of one subnet of VMs."""

    def __init__(
        self,
        *,
        bridge: str,
        subnet: ipaddress.IPv4Network,
        metadata_port: int,
        nat: bool = True,
        host_ports: Collection[int] = (),
    ) -> None:
        """Describe the network; nothing changes on the host until `setup`.

        `host_ports` are the TCP ports of the host that VMs may open (the SSH gateway and Caddy);
        every other new connection from a VM to the host is dropped, except to the metadata service.

        :raise ConfigError: the bridge name, subnet or port is invalid.
        """
        if not _IFNAME_RE.fullmatch(bridge):
            raise ConfigError(f"invalid bridge name {bridge!r}: use 1 to 15 letters or digits")
        if not isinstance(subnet, ipaddress.IPv4Network) or subnet.num_addresses < 4:
            raise ConfigError(f"invalid subnet {subnet}: use an IPv4 network of /30 or larger")
        if not 0 < metadata_port < 65536:
            raise ConfigError(f"invalid metadata port {metadata_port}: use 1 to 65535")
        self.bridge = bridge
        self.subnet = subnet
        self.metadata_port = metadata_port
        self.nat = nat
        for port in host_ports:
            if not 0 < port < 65536:
                raise ConfigError(f"invalid host port {port}: use 1 to 65535")
        self.host_ports = tuple(sorted(set(host_ports)))

    @property
    def bridge_ip(self) -> ipaddress.IPv4Address:
        """Address of the bridge, the subnet's first host address and every VM's gateway."""
        return next(self.subnet.hosts())

    # Bridge and rules.

    async def setup(self) -> None:
        """Create or update the bridge, IP forwarding and the nftables rules; safe to repeat.

        :raise Conflict: an interface with the bridge's name exists and is not a bridge.
        :raise RuntimeFailure: an `ip` or `nft` command failed.
        """
        link = await _link_details(self.bridge)
        if link is None:
            await proc.run(["ip", "link", "add", "name", self.bridge, "type", "bridge"])
        elif _link_kind(link) != "bridge":
            raise Conflict(f"interface {self.bridge} exists and is not a bridge: choose another --bridge")
        await self._set_bridge_address()
        await proc.run(["ip", "link", "set", "dev", self.bridge, "up"])

        await proc.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

        await proc.run(["nft", "-f", "-"], input_text=self.ruleset())
        log.info(
            "network ready: bridge %s %s/%d, metadata at %s:%d, nat %s",
            self.bridge,
            self.bridge_ip,
            self.subnet.prefixlen,
            self.bridge_ip,
            self.metadata_port,
            "on" if self.nat else "off",
        )

    async def _set_bridge_address(self) -> None:
        configured = f"{self.bridge_ip}/{self.subnet.prefixlen}"
        result = await proc.run(["ip", "-j", "-4", "addr", "show", "dev", self.bridge])
        for entry in json.loads(result.stdout or "[]"):
            for info in entry.get("addr_info", []):
                present = f"{info.get('local')}/{info.get('prefixlen')}"
                if present != configured:
                    log.warning("removing stale address %s from bridge %s", present, self.bridge)
                    await proc.run(["ip", "addr", "del", present, "dev", self.bridge])
        await proc.run(["ip", "addr", "replace", configured, "dev", self.bridge])

    def ruleset(self) -> str:
        """Return the nft script that `setup` loads, as one transaction.

        Table `inet ussycode` is replaced whole. Table `bridge ussycode` is only extended and
        its base chain rewritten, so the per-port chains and map elements survive.
        """
        bridge = f'"{self.bridge}"'
        masquerade = ""
        if self.nat:
            masquerade = f"""
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {self.subnet} oifname != {bridge} masquerade
    }}"""
        allowed_ports = ""
        if self.host_ports:
            ports = ", ".join(map(str, self.host_ports))
            allowed_ports = f"""
        iifname {bridge} ip daddr {self.bridge_ip} tcp dport {{ {ports} }} accept"""
        return f"""\
table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname {bridge} ip daddr {METADATA_IP} tcp dport 80 \
dnat ip to {self.bridge_ip}:{self.metadata_port}
    }}{masquerade}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname {bridge} ct state established,related accept
        iifname {bridge} ct status dnat accept
        iifname {bridge} icmp type echo-request accept{allowed_ports}
        iifname {bridge} drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname {bridge} oifname {bridge} drop
        iifname {bridge} ip saddr != {self.subnet} drop
        iifname {bridge} meta nfproto ipv6 drop
        oifname {bridge} ct state established,related accept
        oifname {bridge} drop
    }}
}}
{_BRIDGE_TABLE}
add chain bridge {TABLE} prerouting {{
    type filter hook prerouting priority filter; policy accept;
}}
flush chain bridge {TABLE} prerouting
add rule bridge {TABLE} prerouting iifname vmap @ports
"""

    async def teardown(self) -> None:
        """Delete the nftables tables and the bridge; missing pieces are not an error.

        TAP devices stay, detached from the bridge.
        """
        for family in ("inet", "bridge"):
            if await _table_exists(family):
                await proc.run(["nft", "delete", "table", family, TABLE])
        if await _link_details(self.bridge) is not None:
            await proc.run(["ip", "link", "delete", "dev", self.bridge])
        log.info("network removed: bridge %s", self.bridge)

    # VM ports.

    async def create_tap(self, tap: str, ip: str, mac: str) -> None:
        """Create the persistent TAP device `tap` if missing and attach it as the port of a VM.

        Safe to repeat, also while a hypervisor has the device open.

        :raise InvalidInput: the name, IP or MAC is invalid.
        :raise Conflict: an interface named `tap` exists and is not a TAP device.
        :raise RuntimeFailure: an `ip`, `bridge` or `nft` command failed.
        """
        _check_ifname(tap, "TAP device")
        self._check_vm_ip(ip)
        _check_mac(mac)

        link = await _link_details(tap)
        if link is None:
            await proc.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
        elif _link_kind(link) != "tun":
            raise Conflict(f"interface {tap} exists and is not a TAP device: delete it first")
        await self.attach_port(tap, ip, mac)

    async def attach_port(self, ifname: str, ip: str, mac: str) -> None:
        """Make the existing interface `ifname` an isolated bridge port for the VM at `ip`/`mac`.

        The source-address rules are loaded before the port joins the bridge, so no frame
        passes unfiltered. `create_tap` calls this; tests attach veth devices with it.

        :raise InvalidInput: the name, IP or MAC is invalid.
        :raise NotFound: `ifname` does not exist.
        :raise RuntimeFailure: an `ip`, `bridge` or `nft` command failed.
        """
        _check_ifname(ifname, "interface")
        address = self._check_vm_ip(ip)
        mac = _check_mac(mac)
        if await _link_details(ifname) is None:
            raise NotFound(f"interface {ifname} not found")

        await proc.run(["nft", "-f", "-"], input_text=_port_rules(ifname, address, mac))
        await proc.run(["ip", "link", "set", "dev", ifname, "master", self.bridge])
        await proc.run(["bridge", "link", "set", "dev", ifname, "isolated", "on"])
        await proc.run(["ip", "link", "set", "dev", ifname, "up"])
        log.info("port %s attached to %s for %s (%s)", ifname, self.bridge, address, mac)

    async def delete_tap(self, tap: str) -> None:
        """Delete the TAP device `tap` and its rules; a missing device is not an error.

        :raise InvalidInput: the name is invalid.
        :raise RuntimeFailure: an `ip` or `nft` command failed.
        """
        _check_ifname(tap, "TAP device")
        if await _link_details(tap) is not None:
            await proc.run(["ip", "link", "delete", "dev", tap])
        if await _table_exists("bridge"):
            # Adding the element and chain first makes the deletes succeed when they are absent.
            script = f"""\
{_BRIDGE_TABLE}
add chain bridge {TABLE} {_port_chain(tap)}
add element bridge {TABLE} ports {{ "{tap}" : jump {_port_chain(tap)} }}
delete element bridge {TABLE} ports {{ "{tap}" }}
delete chain bridge {TABLE} {_port_chain(tap)}
"""
            await proc.run(["nft", "-f", "-"], input_text=script)
        log.info("port %s deleted", tap)

    # Addresses and names.

    def _check_vm_ip(self, ip: str) -> ipaddress.IPv4Address:
        try:
            address = ipaddress.IPv4Address(ip)
        except ValueError as exc:
            raise InvalidInput(f"invalid IPv4 address {ip!r}") from exc
        hosts = (self.subnet.network_address, self.subnet.broadcast_address, self.bridge_ip)
        if address not in self.subnet or address in hosts:
            raise InvalidInput(
                f"IP address {ip} is not a VM address of subnet {self.subnet}"
                f" (the bridge has {self.bridge_ip})"
            )
        return address

    def allocate_ip(self, used: Collection[str]) -> str:
        """Return the lowest host address after `bridge_ip` that is not in `used`.

        Entries of `used` that are not IPv4 addresses are skipped with a warning.

        :raise QuotaExceeded: every VM address of the subnet is in use.
        """
        used_addresses: set[ipaddress.IPv4Address] = set()
        for text in used:
            try:
                used_addresses.add(ipaddress.IPv4Address(text))
            except ValueError:
                log.warning("ignoring invalid used IP address %r", text)
        for host in self.subnet.hosts():
            if host != self.bridge_ip and host not in used_addresses:
                return str(host)
        raise QuotaExceeded(
            f"no free IP address left in subnet {self.subnet}: delete a VM or configure a larger --subnet"
        )

    @staticmethod
    def mac_for_ip(ip: str) -> str:
        """Return the VM MAC address for `ip`: 52:54:00 followed by the address's low 3 bytes.

        52:54:00 has the locally administered bit set and the multicast bit clear, and QEMU
        uses the same prefix for its generated addresses.

        :raise InvalidInput: `ip` is not an IPv4 address.
        """
        try:
            packed = ipaddress.IPv4Address(ip).packed
        except ValueError as exc:
            raise InvalidInput(f"invalid IPv4 address {ip!r}") from exc
        return MAC_PREFIX + "".join(f":{byte:02x}" for byte in packed[1:])

    @staticmethod
    def tap_name(vm_id: int) -> str:
        """Return the TAP device name of VM `vm_id`, such as `ussyt42`.

        :raise InvalidInput: `vm_id` is negative or too large for a 15-byte interface name.
        """
        name = f"{TAP_PREFIX}{vm_id}"
        if isinstance(vm_id, bool) or vm_id < 0 or len(name) > 15:
            raise InvalidInput(f"invalid VM id {vm_id!r} for a TAP device name")
        return name


_BRIDGE_TABLE = f"""\
add table bridge {TABLE}
add map bridge {TABLE} ports {{ type ifname : verdict; }}"""


def _port_chain(ifname: str) -> str:
    return f"port-{ifname}"


def _port_rules(ifname: str, ip: ipaddress.IPv4Address, mac: str) -> str:
    chain = _port_chain(ifname)
    return f"""\
{_BRIDGE_TABLE}
add chain bridge {TABLE} {chain}
flush chain bridge {TABLE} {chain}
add rule bridge {TABLE} {chain} ether saddr != {mac} drop
add rule bridge {TABLE} {chain} ip saddr {ip} accept
add rule bridge {TABLE} {chain} arp saddr ether {mac} arp saddr ip {ip} accept
add rule bridge {TABLE} {chain} drop
add element bridge {TABLE} ports {{ "{ifname}" : jump {chain} }}
"""


async def _link_details(name: str) -> dict[str, Any] | None:
    """Return `ip -d link show` of interface `name` as a dict, or None if it does not exist."""
    result = await proc.run(["ip", "-j", "-d", "link", "show", "dev", name], check=False)
    if result.returncode != 0:
        if "does not exist" in result.stderr:
            return None
        raise RuntimeFailure(
            f"cannot look up interface {name}: {result.stderr.strip()}",
            output=result.stderr,
            returncode=result.returncode,
        )
    entries: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return entries[0] if entries else None


def _link_kind(link: dict[str, Any]) -> str:
    kind: str = link.get("linkinfo", {}).get("info_kind", "")
    return kind


async def _table_exists(family: str) -> bool:
    result = await proc.run(["nft", "list", "table", family, TABLE], check=False)
    return result.returncode == 0
