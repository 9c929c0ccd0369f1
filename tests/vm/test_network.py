"""Tests of the VM network: bridge, TAP devices and nftables rules, each in its own namespace.

`Network` acts on the network namespace of the calling thread, so the tests move the test
thread into a fresh namespace with `inside()` around each call. Traffic tests attach veth
devices, whose other ends sit in namespaces of their own, as stand-ins for VMs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.framework.netns import NetNS
from tests.framework.platform import wait_until
from ussycode.errors import ConfigError, Conflict, InvalidInput, NotFound, QuotaExceeded
from ussycode.vm.network import Network

SUBNET = ipaddress.IPv4Network("10.77.0.0/24")
BRIDGE = "ussybr0"
METADATA_PORT = 8083
# TEST-NET-2 (RFC 5737) plays the internet, in a namespace of its own.
UPLINK_HOST = "198.51.100.1"
UPLINK_PEER = "198.51.100.2"
ECHO_PORT = 8080

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# An HTTP server that replies with the client's IP address: argv is HOST PORT.
ECHO_SERVER = """
import http.server, socket, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.HTTPServer):
    address_family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
Server((sys.argv[1], int(sys.argv[2])), Echo).serve_forever()
"""


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns failed: {os.strerror(errno)}")


@contextlib.contextmanager
def inside(namespace: NetNS) -> Iterator[None]:
    """Move the calling thread into `namespace` for the block, and back afterwards.

    Only this thread moves: work handed to other threads would act in the original namespace,
    so code under test must start its commands from the calling thread (asyncio subprocesses
    do). The block does not run unless the move is confirmed.
    """
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/run/netns/{namespace.name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            if os.stat("/proc/thread-self/ns/net").st_ino != os.fstat(target).st_ino:
                raise RuntimeError(f"thread did not enter namespace {namespace.name}")
            yield
        finally:
            _setns(original)
    finally:
        os.close(target)
        os.close(original)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces, bridges and TAP devices")


def make_network(*, nat: bool = True, subnet: ipaddress.IPv4Network = SUBNET) -> Network:
    return Network(
        bridge=BRIDGE, subnet=subnet, metadata_port=METADATA_PORT, nat=nat, host_ports=(ECHO_PORT,)
    )


def link(ns: NetNS, name: str) -> dict[str, Any] | None:
    result = ns.run(["ip", "-j", "-d", "link", "show", "dev", name], check=False)
    if result.returncode != 0:
        return None
    entries: list[dict[str, Any]] = json.loads(result.stdout)
    return entries[0]


def ruleset(ns: NetNS) -> str:
    return ns.run(["nft", "list", "ruleset"]).stdout


def tables(ns: NetNS) -> tuple[str, str]:
    """Return the listings of tables `inet ussycode` and `bridge ussycode`."""
    inet = ns.run(["nft", "list", "table", "inet", "ussycode"]).stdout
    bridge = ns.run(["nft", "list", "table", "bridge", "ussycode"]).stdout
    return inet, bridge


def wait_listening(ns: NetNS, port: int) -> None:
    def listening() -> bool:
        result = ns.run(["ss", "-Hltn", f"sport = :{port}"])
        return bool(result.stdout.strip())

    wait_until(listening, 10.0, f"a listener on port {port} in {ns.name}", interval=0.1)


@pytest.fixture
def server() -> Iterator[NetNS]:
    """The namespace where the platform's network lives."""
    require_root()
    with NetNS("net") as ns:
        yield ns


@pytest.fixture
def network(server: NetNS) -> Network:
    """A `Network` already set up in `server`."""
    net = make_network()
    with inside(server):
        asyncio.run(net.setup())
    return net


# Construction and pure helpers.


@pytest.mark.parametrize("bridge", ["", "has space", "x" * 16, "-lead", "semi;colon"])
def test_network_invalid_bridge(bridge: str) -> None:
    with pytest.raises(ConfigError, match="invalid bridge name"):
        Network(bridge=bridge, subnet=SUBNET, metadata_port=METADATA_PORT)


@pytest.mark.parametrize("subnet", ["10.0.0.0/31", "10.0.0.0/32"])
def test_network_subnet_too_small(subnet: str) -> None:
    with pytest.raises(ConfigError, match="invalid subnet"):
        Network(bridge=BRIDGE, subnet=ipaddress.IPv4Network(subnet), metadata_port=METADATA_PORT)


def test_network_subnet_ipv6() -> None:
    subnet: Any = ipaddress.IPv6Network("fd00::/64")

    with pytest.raises(ConfigError, match="invalid subnet"):
        Network(bridge=BRIDGE, subnet=subnet, metadata_port=METADATA_PORT)


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_network_invalid_metadata_port(port: int) -> None:
    with pytest.raises(ConfigError, match="invalid metadata port"):
        Network(bridge=BRIDGE, subnet=SUBNET, metadata_port=port)


def test_network_bridge_ip() -> None:
    assert make_network().bridge_ip == ipaddress.IPv4Address("10.77.0.1")


def test_allocate_ip_first() -> None:
    assert make_network().allocate_ip([]) == "10.77.0.2"


def test_allocate_ip_lowest_free() -> None:
    net = make_network()

    assert net.allocate_ip(["10.77.0.2", "10.77.0.3", "10.77.0.5"]) == "10.77.0.4"


def test_allocate_ip_reuse_after_release() -> None:
    net = make_network()
    used = [net.allocate_ip([])]
    used.append(net.allocate_ip(used))
    used.append(net.allocate_ip(used))

    used.remove("10.77.0.3")

    assert net.allocate_ip(used) == "10.77.0.3"


def test_allocate_ip_skips_bridge() -> None:
    assert make_network().allocate_ip(["10.77.0.1"]) == "10.77.0.2"


def test_allocate_ip_exhausted() -> None:
    net = make_network(subnet=ipaddress.IPv4Network("10.77.0.0/29"))
    used = [f"10.77.0.{host}" for host in range(2, 7)]

    with pytest.raises(QuotaExceeded, match=r"no free IP address left in subnet 10\.77\.0\.0/29"):
        net.allocate_ip(used)


def test_allocate_ip_last_host() -> None:
    net = make_network(subnet=ipaddress.IPv4Network("10.77.0.0/29"))

    assert net.allocate_ip([f"10.77.0.{host}" for host in range(2, 6)]) == "10.77.0.6"


def test_allocate_ip_ignores_invalid() -> None:
    assert make_network().allocate_ip(["not-an-ip", "", "10.77.0.2"]) == "10.77.0.3"


def test_mac_for_ip_format() -> None:
    assert Network.mac_for_ip("10.77.1.2") == "52:54:00:4d:01:02"


def test_mac_for_ip_locally_administered_unicast() -> None:
    first_octet = int(Network.mac_for_ip("10.0.0.2")[:2], 16)

    assert first_octet & 0b10
    assert not first_octet & 0b01


def test_mac_for_ip_distinct() -> None:
    macs = {Network.mac_for_ip(str(host)) for host in SUBNET.hosts()}

    assert len(macs) == SUBNET.num_addresses - 2


@pytest.mark.parametrize("ip", ["", "10.0.0", "10.0.0.256", "fd00::1", "host"])
def test_mac_for_ip_invalid(ip: str) -> None:
    with pytest.raises(InvalidInput, match="invalid IPv4 address"):
        Network.mac_for_ip(ip)


def test_tap_name_format() -> None:
    assert Network.tap_name(42) == "ussyt42"


def test_tap_name_max_length() -> None:
    assert len(Network.tap_name(9_999_999_999)) == 15


@pytest.mark.parametrize("vm_id", [-1, 10_000_000_000, True])
def test_tap_name_invalid(vm_id: int) -> None:
    with pytest.raises(InvalidInput, match="invalid VM id"):
        Network.tap_name(vm_id)


# Setup and teardown.


@pytest.mark.netns
def test_network_setup_bridge(server: NetNS, network: Network) -> None:
    bridge = link(server, BRIDGE)
    addresses = json.loads(server.run(["ip", "-j", "-4", "addr", "show", "dev", BRIDGE]).stdout)

    assert bridge is not None
    assert bridge["linkinfo"]["info_kind"] == "bridge"
    assert "UP" in bridge["flags"]
    assert [(a["local"], a["prefixlen"]) for a in addresses[0]["addr_info"]] == [("10.77.0.1", 24)]


@pytest.mark.netns
def test_network_setup_ip_forward(server: NetNS, network: Network) -> None:
    assert server.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"


@pytest.mark.netns
def test_network_setup_twice(server: NetNS, network: Network) -> None:
    first = tables(server)

    with inside(server):
        asyncio.run(network.setup())

    assert tables(server) == first
    assert link(server, BRIDGE) is not None


@pytest.mark.netns
def test_network_ruleset(server: NetNS, network: Network) -> None:
    rules = ruleset(server)

    assert 'iifname "ussybr0" ip daddr 169.254.169.254 tcp dport 80 dnat ip to 10.77.0.1:8083' in rules
    assert 'ip saddr 10.77.0.0/24 oifname != "ussybr0" masquerade' in rules
    assert 'iifname "ussybr0" oifname "ussybr0" drop' in rules
    assert 'oifname "ussybr0" ct state established,related accept' in rules
    assert "iifname vmap @ports" in rules


@pytest.mark.netns
def test_network_without_nat(server: NetNS) -> None:
    net = make_network(nat=False)

    with inside(server):
        asyncio.run(net.setup())

    assert "masquerade" not in ruleset(server)
    assert "dnat ip to 10.77.0.1:8083" in ruleset(server)


@pytest.mark.netns
def test_network_setup_replaces_stale_address(server: NetNS) -> None:
    server.run(["ip", "link", "add", "name", BRIDGE, "type", "bridge"])
    server.run(["ip", "addr", "add", "10.99.0.1/16", "dev", BRIDGE])

    with inside(server):
        asyncio.run(make_network().setup())

    addresses = server.run(["ip", "-4", "-o", "addr", "show", "dev", BRIDGE]).stdout
    assert "10.99.0.1" not in addresses
    assert "10.77.0.1/24" in addresses


@pytest.mark.netns
def test_network_setup_name_taken(server: NetNS) -> None:
    server.run(["ip", "link", "add", "name", BRIDGE, "type", "veth", "peer", "name", "peer0"])

    with inside(server), pytest.raises(Conflict, match="is not a bridge"):
        asyncio.run(make_network().setup())


@pytest.mark.netns
def test_network_teardown(server: NetNS, network: Network) -> None:
    with inside(server):
        asyncio.run(network.teardown())

    assert link(server, BRIDGE) is None
    assert "ussycode" not in ruleset(server)


@pytest.mark.netns
def test_network_teardown_twice(server: NetNS, network: Network) -> None:
    with inside(server):
        asyncio.run(network.teardown())
        asyncio.run(network.teardown())

    assert link(server, BRIDGE) is None


@pytest.mark.netns
def test_network_leaves_root_namespace(server: NetNS, network: Network) -> None:
    # The test thread is back in its own namespace here, which must not have the bridge.
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)

    assert BRIDGE not in root_links.stdout


# TAP devices.


@pytest.mark.netns
def test_create_tap(server: NetNS, network: Network) -> None:
    with inside(server):
        asyncio.run(network.create_tap("ussyt7", "10.77.0.7", "52:54:00:4d:00:07"))

    tap = link(server, "ussyt7")
    port = json.loads(server.run(["bridge", "-j", "-d", "link", "show", "dev", "ussyt7"]).stdout)
    assert tap is not None
    assert tap["linkinfo"]["info_data"]["type"] == "tap"
    assert tap["linkinfo"]["info_data"]["persist"] is True
    assert tap["master"] == BRIDGE
    assert "UP" in tap["flags"]
    assert port[0]["isolated"] is True


@pytest.mark.netns
def test_create_tap_rules(server: NetNS, network: Network) -> None:
    with inside(server):
        asyncio.run(network.create_tap("ussyt7", "10.77.0.7", "52:54:00:4D:00:07"))

    chain = server.run(["nft", "list", "chain", "bridge", "ussycode", "port-ussyt7"]).stdout
    ports = server.run(["nft", "list", "map", "bridge", "ussycode", "ports"]).stdout
    assert "ether saddr != 52:54:00:4d:00:07 drop" in chain
    assert "ip saddr 10.77.0.7 accept" in chain
    assert "arp saddr ether 52:54:00:4d:00:07 arp saddr ip 10.77.0.7 accept" in chain
    assert '"ussyt7" : jump port-ussyt7' in ports


@pytest.mark.netns
def test_create_tap_twice(server: NetNS, network: Network) -> None:
    with inside(server):
        asyncio.run(network.create_tap("ussyt7", "10.77.0.7", "52:54:00:4d:00:07"))
        asyncio.run(network.create_tap("ussyt7", "10.77.0.8", "52:54:00:4d:00:08"))

    chain = server.run(["nft", "list", "chain", "bridge", "ussycode", "port-ussyt7"]).stdout
    assert "ip saddr 10.77.0.8 accept" in chain
    assert "10.77.0.7" not in chain


@pytest.mark.netns
def test_create_tap_survives_setup(server: NetNS, network: Network) -> None:
    with inside(server):
        asyncio.run(network.create_tap("ussyt7", "10.77.0.7", "52:54:00:4d:00:07"))
        asyncio.run(network.setup())

    ports = server.run(["nft", "list", "map", "bridge", "ussycode", "ports"]).stdout
    assert '"ussyt7" : jump port-ussyt7' in ports
    assert link(server, "ussyt7") is not None


@pytest.mark.netns
@pytest.mark.parametrize(
    ("tap", "ip", "mac", "message"),
    [
        ("bad name", "10.77.0.7", "52:54:00:4d:00:07", "invalid TAP device name"),
        ("x" * 16, "10.77.0.7", "52:54:00:4d:00:07", "invalid TAP device name"),
        ('t"1', "10.77.0.7", "52:54:00:4d:00:07", "invalid TAP device name"),
        ("ussyt7", "10.78.0.7", "52:54:00:4d:00:07", "is not a VM address"),
        ("ussyt7", "10.77.0.1", "52:54:00:4d:00:07", "is not a VM address"),
        ("ussyt7", "10.77.0.0", "52:54:00:4d:00:07", "is not a VM address"),
        ("ussyt7", "10.77.0.255", "52:54:00:4d:00:07", "is not a VM address"),
        ("ussyt7", "10.77.0.x", "52:54:00:4d:00:07", "invalid IPv4 address"),
        ("ussyt7", "10.77.0.7", "52:54:00:4d:00", "invalid MAC address"),
        ("ussyt7", "10.77.0.7", "52-54-00-4d-00-07", "invalid MAC address"),
        ("ussyt7", "10.77.0.7", "01:00:5e:00:00:07", "multicast"),
    ],
)
def test_create_tap_invalid(
    server: NetNS, network: Network, *, tap: str, ip: str, mac: str, message: str
) -> None:
    with inside(server), pytest.raises(InvalidInput, match=message):
        asyncio.run(network.create_tap(tap, ip, mac))

    assert link(server, "ussyt7") is None


@pytest.mark.netns
def test_create_tap_name_taken(server: NetNS, network: Network) -> None:
    server.run(["ip", "link", "add", "name", "ussyt7", "type", "veth", "peer", "name", "peer0"])

    with inside(server), pytest.raises(Conflict, match="is not a TAP device"):
        asyncio.run(network.create_tap("ussyt7", "10.77.0.7", "52:54:00:4d:00:07"))


@pytest.mark.netns
def test_attach_port_missing(server: NetNS, network: Network) -> None:
    with inside(server), pytest.raises(NotFound, match="interface absent0 not found"):
        asyncio.run(network.attach_port("absent0", "10.77.0.7", "52:54:00:4d:00:07"))


@pytest.mark.netns
def test_delete_tap(server: NetNS, network: Network) -> None:
    with inside(server):
        asyncio.run(network.create_tap("ussyt7", "10.77.0.7", "52:54:00:4d:00:07"))
        asyncio.run(network.delete_tap("ussyt7"))

    assert link(server, "ussyt7") is None
    assert "port-ussyt7" not in ruleset(server)
    assert "iifname vmap @ports" in ruleset(server)


@pytest.mark.netns
def test_delete_tap_absent(server: NetNS, network: Network) -> None:
    before = ruleset(server)

    with inside(server):
        asyncio.run(network.delete_tap("ussyt9"))

    assert ruleset(server) == before


@pytest.mark.netns
def test_delete_tap_without_setup(server: NetNS) -> None:
    with inside(server):
        asyncio.run(make_network().delete_tap("ussyt9"))

    assert ruleset(server).strip() == ""


@pytest.mark.netns
def test_delete_tap_invalid_name(server: NetNS, network: Network) -> None:
    with inside(server), pytest.raises(InvalidInput, match="invalid TAP device name"):
        asyncio.run(network.delete_tap("bad name"))


# Traffic between stand-in VMs, the host and an uplink.


@dataclass
class Lab:
    """A set-up network in `server`, two VMs `vm1`/`vm2` on it, and `uplink` as the internet."""

    server: NetNS
    vm1: NetNS
    vm2: NetNS
    uplink: NetNS
    network: Network
    ip1: str
    ip2: str


def add_vm(server: NetNS, vm: NetNS, network: Network, port: str, ip: str) -> None:
    """Connect namespace `vm` to the bridge through veth `port`, addressed like a VM."""
    server.run(["ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", vm.name])
    vm.run(["ip", "link", "set", "dev", "eth0", "address", Network.mac_for_ip(ip)])
    vm.run(["ip", "addr", "add", f"{ip}/{SUBNET.prefixlen}", "dev", "eth0"])
    vm.run(["ip", "link", "set", "dev", "eth0", "up"])
    vm.run(["ip", "route", "add", "default", "via", str(network.bridge_ip)])
    with inside(server):
        asyncio.run(network.attach_port(port, ip, Network.mac_for_ip(ip)))


@pytest.fixture
def lab(server: NetNS, network: Network) -> Iterator[Lab]:
    with NetNS("vm1") as vm1, NetNS("vm2") as vm2, NetNS("up") as uplink:
        add_vm(server, vm1, network, "veth1", "10.77.0.2")
        add_vm(server, vm2, network, "veth2", "10.77.0.3")

        server.run(["ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", uplink.name])
        server.run(["ip", "addr", "add", f"{UPLINK_HOST}/24", "dev", "up0"])
        server.run(["ip", "link", "set", "dev", "up0", "up"])
        uplink.run(["ip", "addr", "add", f"{UPLINK_PEER}/24", "dev", "eth0"])
        uplink.run(["ip", "link", "set", "dev", "eth0", "up"])
        # Only used to try connections into the VM subnet, which the rules must drop.
        uplink.run(["ip", "route", "add", str(SUBNET), "via", UPLINK_HOST])

        yield Lab(server, vm1, vm2, uplink, network, "10.77.0.2", "10.77.0.3")


def http_get(ns: NetNS, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return ns.run(["curl", "-sS", "--max-time", "3", *extra, url], check=False, timeout=10)


def start_echo(ns: NetNS, host: str, port: int) -> str:
    """Start the echo server in `ns` on `host`:`port` and return its URL."""
    ns.popen([sys.executable, "-c", ECHO_SERVER, host, str(port)], stdout=subprocess.DEVNULL)
    wait_listening(ns, port)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


@pytest.mark.netns
def test_traffic_vm_to_bridge(lab: Lab) -> None:
    url = start_echo(lab.server, str(lab.network.bridge_ip), ECHO_PORT)

    from_vm1 = http_get(lab.vm1, url)
    from_vm2 = http_get(lab.vm2, url)

    assert from_vm1.stdout == lab.ip1, from_vm1.stderr
    assert from_vm2.stdout == lab.ip2, from_vm2.stderr


@pytest.mark.netns
def test_traffic_vm_to_other_host_port_blocked(lab: Lab) -> None:
    open_url = start_echo(lab.server, str(lab.network.bridge_ip), ECHO_PORT)
    closed_url = start_echo(lab.server, str(lab.network.bridge_ip), ECHO_PORT + 1)

    assert http_get(lab.vm1, open_url).stdout == lab.ip1
    assert http_get(lab.server, closed_url).stdout == str(lab.network.bridge_ip)
    assert http_get(lab.vm1, closed_url).returncode != 0


@pytest.mark.netns
def test_network_invalid_host_port() -> None:
    with pytest.raises(ConfigError, match="invalid host port 0"):
        Network(bridge=BRIDGE, subnet=SUBNET, metadata_port=METADATA_PORT, host_ports=(0,))


@pytest.mark.netns
def test_traffic_vm_to_vm_blocked(lab: Lab) -> None:
    bridge_url = start_echo(lab.server, str(lab.network.bridge_ip), ECHO_PORT)
    vm1_url = start_echo(lab.vm1, lab.ip1, ECHO_PORT)
    vm2_url = start_echo(lab.vm2, lab.ip2, ECHO_PORT)

    assert http_get(lab.vm1, bridge_url).stdout == lab.ip1
    assert http_get(lab.server, vm2_url).stdout == str(lab.network.bridge_ip)
    assert http_get(lab.vm1, vm2_url).returncode != 0
    assert http_get(lab.vm2, vm1_url).returncode != 0


@pytest.mark.netns
def test_traffic_vm_to_vm_routed_blocked(lab: Lab) -> None:
    vm2_url = start_echo(lab.vm2, lab.ip2, ECHO_PORT)
    # Through the gateway instead of across the bridge: the host must not route it back.
    lab.vm1.run(["ip", "route", "add", f"{lab.ip2}/32", "via", str(lab.network.bridge_ip)])

    assert http_get(lab.server, vm2_url).stdout == str(lab.network.bridge_ip)
    assert http_get(lab.vm1, vm2_url).returncode != 0


@pytest.mark.netns
def test_traffic_spoofed_ip_dropped(lab: Lab) -> None:
    url = start_echo(lab.server, str(lab.network.bridge_ip), ECHO_PORT)
    lab.vm1.run(["ip", "addr", "add", "10.77.0.50/24", "dev", "eth0"])

    # The genuine request first: it leaves the gateway's MAC in vm1's ARP cache, so the spoofed
    # one needs no ARP request and only its IPv4 source address differs.
    assert http_get(lab.vm1, url, "--interface", lab.ip1).stdout == lab.ip1
    assert http_get(lab.vm1, url, "--interface", "10.77.0.50").returncode != 0


@pytest.mark.netns
def test_traffic_spoofed_mac_dropped(lab: Lab) -> None:
    url = start_echo(lab.server, str(lab.network.bridge_ip), ECHO_PORT)
    lab.vm1.run(["ip", "link", "set", "dev", "eth0", "address", "52:54:00:4d:00:63"])

    assert http_get(lab.vm1, url).returncode != 0
    assert http_get(lab.vm2, url).stdout == lab.ip2


@pytest.mark.netns
def test_traffic_metadata_dnat(lab: Lab) -> None:
    start_echo(lab.server, str(lab.network.bridge_ip), METADATA_PORT)

    result = http_get(lab.vm1, "http://169.254.169.254/")

    assert result.returncode == 0, result.stderr
    assert result.stdout == lab.ip1


@pytest.mark.netns
def test_traffic_metadata_other_port(lab: Lab) -> None:
    start_echo(lab.server, str(lab.network.bridge_ip), METADATA_PORT)

    result = http_get(lab.vm1, f"http://169.254.169.254:{METADATA_PORT}/")

    assert result.returncode != 0


@pytest.mark.netns
def test_traffic_masquerade(lab: Lab) -> None:
    url = start_echo(lab.uplink, UPLINK_PEER, ECHO_PORT)

    result = http_get(lab.vm1, url)

    assert result.returncode == 0, result.stderr
    assert result.stdout == UPLINK_HOST


@pytest.mark.netns
def test_traffic_inbound_blocked(lab: Lab) -> None:
    url = start_echo(lab.vm1, lab.ip1, ECHO_PORT)

    from_host = http_get(lab.server, url)
    from_outside = http_get(lab.uplink, url)

    assert from_host.returncode == 0, from_host.stderr
    assert from_host.stdout == str(lab.network.bridge_ip)
    assert from_outside.returncode != 0


def link_local(ns: NetNS, device: str) -> str:
    """Return the usable IPv6 link-local address of `device` in `ns`, or "" while it is tentative."""
    listing = ns.run(["ip", "-j", "-6", "addr", "show", "dev", device, "scope", "link"])
    entries = json.loads(listing.stdout)
    infos = entries[0]["addr_info"] if entries else []
    ready = [info["local"] for info in infos if not info.get("tentative")]
    return ready[0] if ready else ""


@pytest.mark.netns
def test_traffic_ipv6_dropped(lab: Lab) -> None:
    url = start_echo(lab.server, "::", ECHO_PORT)
    wait_until(lambda: bool(link_local(lab.server, BRIDGE)), 10.0, "the bridge's link-local address")
    wait_until(lambda: bool(link_local(lab.vm1, "eth0")), 10.0, "vm1's link-local address")
    bridge_address = link_local(lab.server, BRIDGE)
    via_ipv4 = url.replace("[::]", str(lab.network.bridge_ip))

    # The dual-stack listener reports IPv4 clients as IPv4-mapped addresses.
    assert http_get(lab.vm1, via_ipv4).stdout == f"::ffff:{lab.ip1}"
    assert http_get(lab.vm1, f"http://[{bridge_address}%eth0]:{ECHO_PORT}/").returncode != 0
