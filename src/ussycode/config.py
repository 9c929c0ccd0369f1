"""Settings of `ussycode serve` and `ussycode image build`.

Each setting has a command-line flag, an environment variable named after the flag
(`--data-dir` is `USSYCODE_DATA_DIR`) and may come from an env file. Precedence, highest first:
flag, environment, env file, built-in default. Values are checked once, at start, and an invalid
value raises `ConfigError` naming the flag, the variable and the value.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ussycode.errors import ConfigError

DEFAULT_ENV_FILE = "/etc/ussycode/ussycode.env"
ENV_PREFIX = "USSYCODE_"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_DOMAIN_RE = re.compile(
    r"^(?=.{1,200}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)


def parse_size(text: str, *, default_unit: str = "") -> int:
    """Parse a size such as `512M`, `10G` or `1.5GiB` into bytes.

    A bare number is taken in `default_unit` (one of "", K, M, G, T).
    :raise ValueError: the text is not a size.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r}; expected a number with a unit such as 512M or 10G")
    number, unit = match.groups()
    unit = (unit or default_unit).upper()
    value = int(float(number) * _SIZE_UNITS[unit])
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value


def format_size(size_bytes: int) -> str:
    """Render a byte count with the largest binary unit that divides it, e.g. `10G`."""
    for unit in ("T", "G", "M", "K"):
        scale = _SIZE_UNITS[unit]
        if size_bytes % scale == 0:
            return f"{size_bytes // scale}{unit}"
    return str(size_bytes)


def parse_addr(text: str) -> tuple[str, int]:
    """Parse `HOST:PORT` or `:PORT` into (host, port); an empty host means every address."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"not an address: {text!r}; expected HOST:PORT or :PORT")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    host = host.strip("[]")
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                raise ValueError(f"not an IP address: {host!r}") from None
    return host, port


def _check_subnet(text: str) -> ipaddress.IPv4Network:
    network = ipaddress.IPv4Network(text, strict=True)
    if network.prefixlen > 29:
        raise ValueError("subnet too small: use a prefix of /29 or shorter")
    return network


def _check_choice(*choices: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return check


def _check_domain(text: str) -> str:
    lowered = text.lower().rstrip(".")
    if not _DOMAIN_RE.match(lowered) or "." not in lowered:
        raise ValueError("not a domain name with at least two labels, such as ussy.localhost")
    return lowered


def _check_positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _check_non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


# The warm pool boots its VMs one at a time; more than this many idle VMs is a typo, not a plan.
MAX_POOL_VMS = 64


def _check_pool_count(text: str) -> int:
    value = _check_non_negative_int(text)
    if value > MAX_POOL_VMS:
        raise ValueError(f"must be at most {MAX_POOL_VMS}")
    return value


def _check_non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _check_positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


def _check_dns(text: str) -> tuple[str, ...]:
    servers = tuple(part.strip() for part in text.split(",") if part.strip())
    for server in servers:
        ipaddress.ip_address(server)
    return servers


def _check_fingerprints(text: str) -> tuple[str, ...]:
    prints = tuple(part.strip() for part in text.split(",") if part.strip())
    for item in prints:
        if not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", item):
            raise ValueError(
                f"not an SSH key fingerprint: {item!r}; expected SHA256:... as ssh-keygen -l prints"
            )
    return prints


def _check_yes_no(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("yes", "true", "1", "on"):
        return True
    if lowered in ("no", "false", "0", "off", ""):
        return False
    raise ValueError("expected yes or no")


def _check_url(text: str) -> str:
    if text and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", text):
        raise ValueError(
            "expected an http:// or https:// URL without query, such as https://routussy.example"
        )
    if text:
        # The URL is shown in logs and in errors that VMs receive, so it must carry no password.
        parts = urllib.parse.urlsplit(text)
        if parts.username is not None or parts.password is not None:
            raise ValueError("the URL contains a user name or password: remove it and set the key separately")
        if not parts.hostname:
            raise ValueError("the URL has no host name")
        # Raises ValueError for a port out of range or not a number.
        _ = parts.port
    return text.rstrip("/")


PROVIDER_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")


def _parse_name_pairs(text: str, what: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.strip().partition("=")
        name = name.strip()
        if not sep or not PROVIDER_NAME_RE.fullmatch(name) or not value.strip():
            # Only the name is shown, because the value of a NAME=KEY entry is a secret.
            shown = f"the entry for {name!r}" if sep else f"entry {len(pairs) + 1}"
            raise ValueError(
                f"{shown} is not NAME={what}: NAME is lower-case letters, digits and -, such as ollama"
            )
        if any(name == known for known, _ in pairs):
            raise ValueError(f"{name} is given twice")
        pairs.append((name, value.strip()))
    return tuple(pairs)


def _check_endpoints(text: str) -> tuple[tuple[str, str], ...]:
    pairs = _parse_name_pairs(text, "URL")
    return tuple((name, _check_url(url)) for name, url in pairs)


def _check_endpoint_keys(text: str) -> tuple[tuple[str, str], ...]:
    return _parse_name_pairs(text, "KEY")


def _check_idle(text: str) -> int:
    from ussycode.errors import InvalidInput
    from ussycode.vm.idle import parse_idle

    try:
        return parse_idle(text, what="value")
    except InvalidInput as exc:
        raise ValueError(exc.message.partition(": ")[2]) from exc


def _check_level(text: str) -> str:
    upper = text.upper()
    if upper not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected debug, info, warning or error")
    return upper


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str
    check: Callable[[str], Any] = str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "domain",
        "ussy.localhost",
        "public domain; VM URLs are https://<vm>.<domain>",
        _check_domain,
    ),
    Setting("data_dir", "/var/lib/ussycode", "directory for the store, VM disks, keys and logs"),
    Setting("image_dir", "", "directory of built guest images (default: <data-dir>/images)"),
    Setting("ssh_addr", ":2224", "SSH gateway listen address, HOST:PORT or :PORT", parse_addr),
    Setting(
        "ssh_host",
        "",
        "host name shown in ssh commands (default: the domain, or localhost for *.localhost)",
    ),
    Setting("https_addr", ":443", "Caddy HTTPS listen address", parse_addr),
    Setting("http_addr", ":80", "Caddy HTTP listen address (redirects to HTTPS)", parse_addr),
    Setting(
        "metadata_addr",
        ":8083",
        "metadata service listen address; VMs reach it as 169.254.169.254:80",
        parse_addr,
    ),
    Setting(
        "api_addr",
        "127.0.0.1:9090",
        "internal HTTP address that Caddy proxies the main domain to",
        parse_addr,
    ),
    Setting(
        "subnet",
        "10.0.0.0/24",
        "IPv4 subnet for VMs; the bridge takes the first address",
        _check_subnet,
    ),
    Setting("bridge", "ussy0", "name of the bridge that VM TAP devices join"),
    Setting("runtime", "auto", "VM runtime: auto or qemu", _check_choice("auto", "qemu")),
    Setting(
        "accel",
        "auto",
        "QEMU accelerator: auto (probe KVM once, else TCG), kvm or tcg",
        _check_choice("auto", "kvm", "tcg"),
    ),
    Setting("image", "ussyuntu", "default guest image for new VMs"),
    Setting("vm_cpus", "1", "default vCPUs per VM", _check_positive_int),
    Setting(
        "vm_memory",
        "1G",
        "default memory per VM (size, e.g. 1G or 512M)",
        lambda t: parse_size(t, default_unit="M"),
    ),
    Setting(
        "vm_disk",
        "10G",
        "default disk size per VM (size, e.g. 10G)",
        lambda t: parse_size(t, default_unit="G"),
    ),
    Setting("max_vm_cpus", "8", "most vCPUs a user may give one VM (new, resize)", _check_positive_int),
    Setting(
        "max_vm_memory",
        "16G",
        "most memory a user may give one VM (size, e.g. 16G)",
        lambda t: parse_size(t, default_unit="M"),
    ),
    Setting(
        "max_vm_disk",
        "200G",
        "largest disk a user may give one VM (size, e.g. 200G)",
        lambda t: parse_size(t, default_unit="G"),
    ),
    Setting("vm_dns", "1.1.1.1,9.9.9.9", "comma-separated DNS servers given to VMs", _check_dns),
    Setting(
        "boot_timeout",
        "300",
        "seconds to wait for a new VM's sshd before giving up",
        _check_non_negative_float,
    ),
    Setting(
        "api_rate",
        "10",
        "API requests per second for each signing key or API key, with bursts of twice that",
        _check_positive_float,
    ),
    Setting(
        "session_days",
        "30",
        "days a browser login lasts before the browser command is needed again",
        _check_positive_int,
    ),
    Setting(
        "tls",
        "auto",
        "certificates: internal (Caddy's own CA), acme, or auto (internal for local domains)",
        _check_choice("auto", "internal", "acme"),
    ),
    Setting("acme_email", "", "contact email for ACME accounts"),
    Setting("caddy_bin", "caddy", "path of the Caddy binary"),
    Setting("qemu_bin", "qemu-system-x86_64", "path of the QEMU binary"),
    Setting("log_level", "info", "log level: debug, info, warning or error", _check_level),
    Setting(
        "admission",
        "open",
        "who may register an unknown SSH key: open (anyone), routussy (keys Routussy approved)"
        " or invite (keys an admin added or that came with an invitation)",
        _check_choice("open", "routussy", "invite"),
    ),
    Setting("routussy_url", "", "base URL of Routussy, for --admission routussy", _check_url),
    Setting(
        "routussy_internal_key",
        "",
        "bearer token for Routussy's authorized-keys endpoint (a secret: never logged)",
    ),
    Setting(
        "routussy_cache_seconds",
        "60",
        "seconds a list of approved keys from Routussy is used before it is fetched again",
        _check_non_negative_float,
    ),
    Setting(
        "trust_tailscale",
        "no",
        "yes: admit unknown keys from the Tailscale range 100.64.0.0/10 without Routussy or an invitation",
        _check_yes_no,
    ),
    Setting(
        "admins",
        "",
        "comma-separated SSH key fingerprints (SHA256:...) whose users are admins",
        _check_fingerprints,
    ),
    Setting(
        "default_tier",
        "newbie",
        "trust tier of new users: newbie, citizen, operator or admin",
        _check_choice("newbie", "citizen", "operator", "admin"),
    ),
    Setting(
        "tier_newbie",
        "vms=2,cpus=1,memory=2G,disk=20G,running=1",
        "limits of the newbie tier: vms, cpus and memory per VM, total disk, running VMs",
    ),
    Setting(
        "tier_citizen",
        "vms=5,cpus=2,memory=4G,disk=100G,running=3",
        "limits of the citizen tier (same keys as --tier-newbie)",
    ),
    Setting(
        "tier_operator",
        "vms=20,cpus=4,memory=8G,disk=500G,running=10",
        "limits of the operator tier (same keys as --tier-newbie)",
    ),
    Setting(
        "tier_admin",
        "vms=100,cpus=8,memory=16G,disk=2T,running=50",
        "limits of the admin tier (same keys as --tier-newbie)",
    ),
    Setting(
        "auth_failures",
        "10",
        "failed SSH logins per source address per minute before that address is refused for a minute",
        _check_positive_int,
    ),
    Setting(
        "idle_timeout",
        "30m",
        "time without SSH sessions, HTTPS requests and CPU use after which a VM is suspended,"
        ' such as 30m or 2h, or "never"; new --idle and resize --idle set it per VM',
        _check_idle,
    ),
    Setting(
        "admin_addr",
        "127.0.0.1:9091",
        "listen address of the admin panel (also served at https://<domain>/admin/), HOST:PORT or :PORT",
        parse_addr,
    ),
    Setting(
        "llm_secret",
        "",
        "secret that encrypts users' LLM keys (a secret: never logged; default: a random one"
        " generated into <data-dir>/llm-secret)",
    ),
    Setting("llm_openai_url", "https://api.openai.com", "base URL of the OpenAI API", _check_url),
    Setting("llm_anthropic_url", "https://api.anthropic.com", "base URL of the Anthropic API", _check_url),
    Setting(
        "llm_fireworks_url", "https://api.fireworks.ai/inference", "base URL of the Fireworks API", _check_url
    ),
    Setting("llm_openrouter_url", "https://openrouter.ai/api", "base URL of the OpenRouter API", _check_url),
    Setting("llm_openai_key", "", "platform key for OpenAI, used within each user's budget (a secret)"),
    Setting("llm_anthropic_key", "", "platform key for Anthropic (a secret)"),
    Setting("llm_fireworks_key", "", "platform key for Fireworks (a secret)"),
    Setting("llm_openrouter_key", "", "platform key for OpenRouter (a secret)"),
    Setting(
        "llm_endpoints",
        "",
        "extra OpenAI-compatible providers as NAME=URL,... such as ollama=http://10.0.0.1:11434",
        _check_endpoints,
    ),
    Setting(
        "llm_endpoint_keys",
        "",
        "platform keys of the --llm-endpoints providers as NAME=KEY,... (a secret)",
        _check_endpoint_keys,
    ),
    Setting(
        "llm_routussy",
        "no",
        "yes: VMs get OPENCODE_* variables for Routussy at --routussy-url, and the LLM gateway"
        " sends OpenAI-style requests without another key to Routussy",
        _check_yes_no,
    ),
    Setting(
        "llm_tier_newbie",
        "tokens=200000,rpm=20",
        "LLM limits of the newbie tier on platform keys: tokens per day, requests per minute",
    ),
    Setting("llm_tier_citizen", "tokens=1000000,rpm=60", "LLM limits of the citizen tier"),
    Setting("llm_tier_operator", "tokens=5000000,rpm=120", "LLM limits of the operator tier"),
    Setting("llm_tier_admin", "tokens=20000000,rpm=300", "LLM limits of the admin tier"),
    Setting(
        "llm_own_key_rpm",
        "300",
        "requests per minute through the LLM gateway for each user on their own keys",
        _check_positive_int,
    ),
    Setting(
        "pool_size",
        "1",
        "booted VMs of the default image kept ready for new; 0 turns the warm pool off",
        _check_pool_count,
    ),
    Setting(
        "pool_max",
        "3",
        "most VMs the warm pool grows to while new is in demand (at least --pool-size)",
        _check_pool_count,
    ),
    Setting(
        "memory_reserve",
        "1G",
        "host memory (size) that the warm pool leaves available: it boots no VM that would leave less",
        lambda t: parse_size(t, default_unit="M"),
    ),
)

# Settings whose values are never shown or logged.
SECRET_SETTINGS = frozenset(
    {
        "routussy_internal_key",
        "llm_secret",
        "llm_openai_key",
        "llm_anthropic_key",
        "llm_fireworks_key",
        "llm_openrouter_key",
        "llm_endpoint_keys",
    }
)

_LOCAL_SUFFIXES = ("localhost", "local", "test", "internal", "home.arpa")


@dataclass(frozen=True)
class Config:
    """Checked settings; see `SETTINGS` for what each field means."""

    domain: str
    data_dir: Path
    image_dir: Path
    ssh_addr: tuple[str, int]
    ssh_host: str
    https_addr: tuple[str, int]
    http_addr: tuple[str, int]
    metadata_addr: tuple[str, int]
    api_addr: tuple[str, int]
    subnet: ipaddress.IPv4Network
    bridge: str
    runtime: str
    accel: str
    image: str
    vm_cpus: int
    vm_memory: int
    vm_disk: int
    max_vm_cpus: int
    max_vm_memory: int
    max_vm_disk: int
    vm_dns: tuple[str, ...]
    boot_timeout: float
    api_rate: float
    session_days: int
    tls: str
    acme_email: str
    caddy_bin: str
    qemu_bin: str
    log_level: str
    admission: str = "open"
    routussy_url: str = ""
    routussy_internal_key: str = field(default="", repr=False)
    routussy_cache_seconds: float = 60.0
    trust_tailscale: bool = False
    admins: tuple[str, ...] = ()
    default_tier: str = "newbie"
    tier_newbie: str = "vms=2,cpus=1,memory=2G,disk=20G,running=1"
    tier_citizen: str = "vms=5,cpus=2,memory=4G,disk=100G,running=3"
    tier_operator: str = "vms=20,cpus=4,memory=8G,disk=500G,running=10"
    tier_admin: str = "vms=100,cpus=8,memory=16G,disk=2T,running=50"
    auth_failures: int = 10
    admin_addr: tuple[str, int] = ("127.0.0.1", 9091)
    llm_secret: str = field(default="", repr=False)
    llm_openai_url: str = "https://api.openai.com"
    llm_anthropic_url: str = "https://api.anthropic.com"
    llm_fireworks_url: str = "https://api.fireworks.ai/inference"
    llm_openrouter_url: str = "https://openrouter.ai/api"
    llm_openai_key: str = field(default="", repr=False)
    llm_anthropic_key: str = field(default="", repr=False)
    llm_fireworks_key: str = field(default="", repr=False)
    llm_openrouter_key: str = field(default="", repr=False)
    llm_endpoints: tuple[tuple[str, str], ...] = ()
    llm_endpoint_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    llm_routussy: bool = False
    llm_tier_newbie: str = "tokens=200000,rpm=20"
    llm_tier_citizen: str = "tokens=1000000,rpm=60"
    llm_tier_operator: str = "tokens=5000000,rpm=120"
    llm_tier_admin: str = "tokens=20000000,rpm=300"
    llm_own_key_rpm: int = 300
    pool_size: int = 1
    pool_max: int = 3
    memory_reserve: int = 1024**3
    idle_timeout: int = 1800
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def is_local_domain(self) -> bool:
        return self.domain.split(".")[-1] in _LOCAL_SUFFIXES or self.domain.endswith(".home.arpa")

    @property
    def tls_mode(self) -> str:
        """`internal` or `acme`, with `auto` resolved by the domain."""
        if self.tls != "auto":
            return self.tls
        return "internal" if self.is_local_domain else "acme"

    @property
    def bridge_ip(self) -> ipaddress.IPv4Address:
        return next(self.subnet.hosts())

    def vm_https_url(self, vm_name: str) -> str:
        port = self.https_addr[1]
        suffix = "" if port == 443 else f":{port}"
        return f"https://{vm_name}.{self.domain}{suffix}/"

    def ssh_command(self, user: str | None = None) -> str:
        port = self.ssh_addr[1]
        target = f"{user}@{self.ssh_host}" if user else self.ssh_host
        return f"ssh -p {port} {target}" if port != 22 else f"ssh {target}"

    def public_dict(self) -> dict[str, Any]:
        """Settings in effect, as strings, for logs and diagnostics; a secret shows only if it is set."""
        shown: dict[str, Any] = {}
        for item in fields(self):
            if item.name == "sources":
                continue
            value = getattr(self, item.name)
            if item.name in SECRET_SETTINGS:
                shown[item.name] = "(set)" if value else "(not set)"
            else:
                shown[item.name] = str(value)
        return shown


def read_env_file(path: Path) -> dict[str, str]:
    """Read `KEY=VALUE` lines; `#` starts a comment line and values may be quoted.

    :raise ConfigError: a line is not `KEY=VALUE`.
    """
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return values
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.strerror}") from exc
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"invalid line {number} in env file {path}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--env-file` and one flag per setting, each defaulting to None so precedence can apply."""
    parser.add_argument(
        "--env-file",
        default=None,
        help=f"file of USSYCODE_*=VALUE lines (default {DEFAULT_ENV_FILE}; env USSYCODE_ENV_FILE)",
    )
    for setting in SETTINGS:
        parser.add_argument(
            setting.flag,
            dest=setting.name,
            default=None,
            metavar=setting.name.split("_")[-1].upper(),
            help=f"{setting.help} (env {setting.env}; default {setting.default!r})",
        )


def load(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """Merge flags, environment, env file and defaults, then check every value.

    :raise ConfigError: a value is invalid; the message names the flag, variable and value.
    """
    environ = os.environ if environ is None else environ
    env_file = getattr(args, "env_file", None) or environ.get(ENV_PREFIX + "ENV_FILE") or DEFAULT_ENV_FILE
    file_values = read_env_file(Path(env_file))

    raw: dict[str, str] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        flag_value = getattr(args, setting.name, None)
        if flag_value is not None:
            raw[setting.name], sources[setting.name] = flag_value, "flag"
        elif setting.env in environ:
            raw[setting.name], sources[setting.name] = environ[setting.env], "environment"
        elif setting.env in file_values:
            raw[setting.name], sources[setting.name] = (
                file_values[setting.env],
                f"env file {env_file}",
            )
        else:
            raw[setting.name], sources[setting.name] = setting.default, "default"

    checked: dict[str, Any] = {}
    for setting in SETTINGS:
        value = raw[setting.name]
        try:
            checked[setting.name] = setting.check(value)
        except ValueError as exc:
            shown = "(value hidden)" if setting.name in SECRET_SETTINGS else repr(value)
            raise ConfigError(
                f"invalid {setting.flag} ({setting.env}, from {sources[setting.name]}): {shown}: {exc}"
            ) from exc

    data_dir = Path(checked["data_dir"]).absolute()
    checked["data_dir"] = data_dir
    checked["image_dir"] = (
        Path(checked["image_dir"]).absolute() if checked["image_dir"] else data_dir / "images"
    )
    if not checked["ssh_host"]:
        domain = checked["domain"]
        checked["ssh_host"] = "localhost" if domain.endswith("localhost") else domain
    bridge = checked["bridge"]
    if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_-]{0,11}", bridge):
        raise ConfigError(
            f"invalid --bridge (USSYCODE_BRIDGE): {bridge!r}: use 1 to 12 letters, digits, - or _"
        )
    if checked["admission"] == "routussy" and not (
        checked["routussy_url"] and checked["routussy_internal_key"]
    ):
        raise ConfigError(
            "--admission routussy needs --routussy-url (USSYCODE_ROUTUSSY_URL) and"
            " USSYCODE_ROUTUSSY_INTERNAL_KEY"
        )
    if checked["llm_routussy"] and not checked["routussy_url"]:
        raise ConfigError("--llm-routussy yes needs --routussy-url (USSYCODE_ROUTUSSY_URL)")
    _check_llm_settings(checked, sources)
    if checked["pool_max"] < checked["pool_size"]:
        raise ConfigError(
            f"invalid --pool-max (USSYCODE_POOL_MAX, from {sources['pool_max']}): {checked['pool_max']}:"
            f" must be at least --pool-size ({checked['pool_size']})"
        )
    from ussycode.auth.tiers import parse_tier_limits

    _check_tier_settings(checked, sources, "tier", parse_tier_limits)
    return Config(**checked, sources=sources)


def _check_tier_settings(
    checked: dict[str, Any], sources: dict[str, str], prefix: str, parse: Callable[[str], object]
) -> None:
    """Check the settings `<prefix>_<tier>` of the four tiers with `parse`.

    :raise ConfigError: `parse` raised ValueError for one of them.
    """
    for tier in ("newbie", "citizen", "operator", "admin"):
        name = f"{prefix}_{tier}"
        try:
            parse(checked[name])
        except ValueError as exc:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"invalid {flag} ({ENV_PREFIX}{name.upper()}, from {sources[name]}): {checked[name]!r}: {exc}"
            ) from exc


def _check_llm_settings(checked: dict[str, Any], sources: dict[str, str]) -> None:
    """Check the LLM gateway's settings that depend on each other.

    :raise ConfigError: an endpoint reuses a built-in provider's name, a key names no endpoint,
        or a tier's LLM limits are invalid.
    """
    from ussycode.llm.limits import parse_llm_limits
    from ussycode.llm.providers import BUILTIN_PROVIDERS

    names = [name for name, _ in checked["llm_endpoints"]]
    for name in names:
        if name in BUILTIN_PROVIDERS:
            raise ConfigError(
                f"invalid --llm-endpoints (USSYCODE_LLM_ENDPOINTS): {name!r} is a built-in provider;"
                " set its URL with --llm-" + name + "-url instead"
            )
    for name, _ in checked["llm_endpoint_keys"]:
        if name not in names:
            raise ConfigError(
                f"invalid USSYCODE_LLM_ENDPOINT_KEYS: {name!r} is not in --llm-endpoints;"
                " add NAME=URL there first"
            )
    _check_tier_settings(checked, sources, "llm_tier", parse_llm_limits)
