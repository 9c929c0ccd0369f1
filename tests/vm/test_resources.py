"""Parsing of the CPU, memory and disk amounts of new, cp and resize."""

from __future__ import annotations

import argparse

import pytest

from ussycode import config
from ussycode.errors import InvalidInput, QuotaExceeded
from ussycode.vm import resources

GiB = 1024**3


@pytest.fixture
def settings() -> config.Config:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    args = parser.parse_args(["--max-vm-cpus", "4", "--max-vm-memory", "8G", "--max-vm-disk", "50G"])
    return config.load(args, environ={})


def test_parse_cpus_valid(settings: config.Config) -> None:
    assert resources.parse_cpus("1", settings) == 1
    assert resources.parse_cpus("4", settings) == 4


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("two", InvalidInput, 'invalid --cpu "two": expected a whole number of vCPUs, such as 2'),
        ("1.5", InvalidInput, 'invalid --cpu "1.5": expected a whole number of vCPUs, such as 2'),
        ("0", InvalidInput, 'invalid --cpu "0": a VM needs at least 1 vCPU'),
        ("-3", InvalidInput, 'invalid --cpu "-3": a VM needs at least 1 vCPU'),
        ("5", QuotaExceeded, "--cpu 5 is over the limit of 4 vCPUs per VM"),
    ],
)
def test_parse_cpus_invalid(settings: config.Config, text: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        resources.parse_cpus(text, settings)
    assert str(caught.value) == message


def test_parse_memory_units(settings: config.Config) -> None:
    assert resources.parse_memory_mb("512", settings) == 512
    assert resources.parse_memory_mb("512M", settings) == 512
    assert resources.parse_memory_mb("2G", settings) == 2048
    assert resources.parse_memory_mb("1.5GiB", settings) == 1536


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("lots", InvalidInput, 'invalid --memory "lots": expected a size such as 512M or 2G'),
        ("0", InvalidInput, 'invalid --memory "0": expected a size such as 512M or 2G'),
        ("100M", InvalidInput, "--memory 100M is below the minimum of 256M"),
        ("1000K", InvalidInput, 'invalid --memory "1000K": memory must be a whole number of MiB'),
        ("9G", QuotaExceeded, "--memory 9G is over the limit of 8G per VM"),
    ],
)
def test_parse_memory_invalid(
    settings: config.Config, text: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        resources.parse_memory_mb(text, settings)
    assert str(caught.value) == message


def test_parse_disk_units(settings: config.Config) -> None:
    assert resources.parse_disk("20", settings) == 20 * GiB
    assert resources.parse_disk("20G", settings) == 20 * GiB
    assert resources.parse_disk("2048M", settings) == 2 * GiB
    assert resources.parse_disk("1000K", settings) == 1024**2


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("big", InvalidInput, 'invalid --disk "big": expected a size such as 20G'),
        ("-5G", InvalidInput, 'invalid --disk "-5G": expected a size such as 20G'),
        ("20X", InvalidInput, 'invalid --disk "20X": expected a size such as 20G'),
        ("51G", QuotaExceeded, "--disk 51G is over the limit of 50G per VM"),
        ("1T", QuotaExceeded, "--disk 1T is over the limit of 50G per VM"),
    ],
)
def test_parse_disk_invalid(settings: config.Config, text: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        resources.parse_disk(text, settings)
    assert str(caught.value) == message
