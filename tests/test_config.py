from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from ussycode import config
from ussycode.errors import ConfigError


def parse(
    argv: list[str], environ: dict[str, str] | None = None, env_file: Path | None = None
) -> config.Config:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    args = parser.parse_args(argv)
    env = dict(environ or {})
    env["USSYCODE_ENV_FILE"] = str(env_file) if env_file else "/nonexistent/ussycode.env"
    return config.load(args, env)


def test_config_defaults() -> None:
    settings = parse([])
    assert settings.domain == "ussy.localhost"
    assert settings.data_dir == Path("/var/lib/ussycode")
    assert settings.image_dir == Path("/var/lib/ussycode/images")
    assert settings.ssh_addr == ("", 2224)
    assert settings.https_addr == ("", 443)
    assert settings.http_addr == ("", 80)
    assert settings.metadata_addr == ("", 8083)
    assert settings.subnet == ipaddress.IPv4Network("10.0.0.0/24")
    assert str(settings.bridge_ip) == "10.0.0.1"
    assert settings.runtime == "auto"
    assert settings.tls_mode == "internal"
    assert settings.ssh_host == "localhost"
    assert settings.vm_memory == 1024**3


def test_config_precedence_flag_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "ussycode.env"
    env_file.write_text(
        '# comment\nUSSYCODE_DOMAIN="file.example"\nUSSYCODE_VM_CPUS=3\nexport USSYCODE_VM_DISK=20G\n'
    )
    from_file = parse([], {}, env_file)
    assert from_file.domain == "file.example"
    assert from_file.vm_cpus == 3
    assert from_file.vm_disk == 20 * 1024**3
    from_env = parse([], {"USSYCODE_DOMAIN": "env.example"}, env_file)
    assert from_env.domain == "env.example"
    assert from_env.sources["domain"] == "environment"
    from_flag = parse(["--domain", "flag.example"], {"USSYCODE_DOMAIN": "env.example"}, env_file)
    assert from_flag.domain == "flag.example"
    assert from_flag.sources["domain"] == "flag"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--subnet", "10.0.0.0/33"], "--subnet"),
        (["--subnet", "10.0.0.5/24"], "'10.0.0.5/24'"),
        (["--ssh-addr", "2224"], "--ssh-addr"),
        (["--ssh-addr", ":70000"], "port out of range"),
        (["--runtime", "docker"], "expected one of auto, qemu"),
        (["--vm-memory", "lots"], "not a size"),
        (["--vm-cpus", "0"], "positive"),
        (["--domain", "nodot"], "--domain"),
        (["--bridge", "this-name-is-too-long"], "--bridge"),
        (["--vm-dns", "1.1.1"], "--vm-dns"),
        (["--pool-size", "-1"], "--pool-size"),
        (["--pool-size", "two"], "--pool-size"),
        (["--pool-max", "-3"], "--pool-max"),
        (["--pool-max", "9" * 25], "must be at most 64"),
        (["--pool-size", "4", "--pool-max", "3"], "must be at least --pool-size (4)"),
        (["--memory-reserve", "much"], "--memory-reserve"),
        (["--tier-citizen", "vms=lots"], "invalid --tier-citizen (USSYCODE_TIER_CITIZEN"),
    ],
)
def test_config_invalid_values_named(argv: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(argv)
    assert fragment in caught.value.message
    assert "invalid --" in caught.value.message


def test_config_pool_settings() -> None:
    defaults = parse([])
    assert (defaults.pool_size, defaults.pool_max, defaults.memory_reserve) == (1, 3, 1024**3)
    off = parse([], {"USSYCODE_POOL_SIZE": "0", "USSYCODE_POOL_MAX": "0"})
    assert (off.pool_size, off.pool_max) == (0, 0)
    grown = parse(["--pool-size", "2", "--pool-max", "5", "--memory-reserve", "512"])
    assert (grown.pool_size, grown.pool_max, grown.memory_reserve) == (2, 5, 512 * 1024**2)


def test_config_invalid_env_value_names_variable() -> None:
    with pytest.raises(ConfigError, match="USSYCODE_VM_CPUS"):
        parse([], {"USSYCODE_VM_CPUS": "many"})


def test_config_env_file_bad_line(tmp_path: Path) -> None:
    env_file = tmp_path / "bad.env"
    env_file.write_text("USSYCODE_DOMAIN\n")
    with pytest.raises(ConfigError, match="invalid line 1"):
        parse([], {}, env_file)


def test_config_urls_and_commands() -> None:
    settings = parse(["--https-addr", ":8443", "--ssh-addr", ":22", "--domain", "dev.example.org"])
    assert settings.vm_https_url("mild-owl") == "https://mild-owl.dev.example.org:8443/"
    assert settings.ssh_command("mild-owl") == "ssh mild-owl@dev.example.org"
    assert settings.tls_mode == "acme"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512M", 512 * 1024**2), ("1.5G", 1536 * 1024**2), ("10GiB", 10 * 1024**3), ("2048", 2048)],
)
def test_parse_size_units(text: str, expected: int) -> None:
    assert config.parse_size(text) == expected
