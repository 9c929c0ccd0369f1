"""Tier limits, admission settings and Routussy answers, parsed without a server."""

from __future__ import annotations

import argparse

import pytest

from ussycode import config
from ussycode.auth.admission import FailedLogins
from ussycode.auth.routussy import MalformedAnswer, parse_authorized_keys
from ussycode.auth.tiers import Limits, parse_tier_limits
from ussycode.errors import ConfigError

FINGERPRINT = "SHA256:" + "A" * 43


def load(environ: dict[str, str]) -> config.Config:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.load(parser.parse_args([]), {"USSYCODE_ENV_FILE": "/nonexistent.env", **environ})


def test_tiers_parse_limits() -> None:
    limits = parse_tier_limits("vms=2, cpus=1, memory=512, disk=20G, running=0")
    assert limits == Limits(vms=2, cpus=1, memory_mb=512, disk_bytes=20 * 1024**3, running=0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vms=2,cpus=1,memory=1G,disk=20G", "missing running"),
        ("vms=2,vms=3,cpus=1,memory=1G,disk=20G,running=1", "vms is given twice"),
        ("vms=2,cpus=1,memory=1G,disk=20G,running=1,gpus=1", "unknown limit 'gpus'"),
        ("vms=two,cpus=1,memory=1G,disk=20G,running=1", "vms must be a whole number"),
        ("vms=2,cpus=1,memory=lots,disk=20G,running=1", "not a size"),
        ("vms 2", "expected KEY=VALUE"),
    ],
)
def test_tiers_bad_limits(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tier_limits(text)


def test_config_bad_tier_setting() -> None:
    with pytest.raises(ConfigError, match="invalid --tier-citizen"):
        load({"USSYCODE_TIER_CITIZEN": "vms=1"})


def test_config_routussy_needs_url() -> None:
    with pytest.raises(ConfigError, match="--admission routussy needs --routussy-url"):
        load({"USSYCODE_ADMISSION": "routussy"})


def test_config_bad_admins() -> None:
    with pytest.raises(ConfigError, match="not an SSH key fingerprint"):
        load({"USSYCODE_ADMINS": "MD5:00:11"})


def test_config_secret_hidden() -> None:
    settings = load(
        {
            "USSYCODE_ADMISSION": "routussy",
            "USSYCODE_ROUTUSSY_URL": "http://127.0.0.1:1",
            "USSYCODE_ROUTUSSY_INTERNAL_KEY": "hunter2-secret",
        }
    )
    assert settings.public_dict()["routussy_internal_key"] == "(set)"
    assert "hunter2-secret" not in repr(settings)


def test_routussy_parse_shapes() -> None:
    assert parse_authorized_keys(f'["{FINGERPRINT}"]'.encode()) == {FINGERPRINT}
    assert parse_authorized_keys(f'{{"keys": [{{"fingerprint": "{FINGERPRINT}"}}]}}'.encode()) == {
        FINGERPRINT
    }
    assert parse_authorized_keys(b'{"keys": []}') == frozenset()


@pytest.mark.parametrize("body", [b"\xff", b"null", b'{"keys": {}}', b'["SHA256:short"]', b"[[]]"])
def test_routussy_parse_malformed(body: bytes) -> None:
    with pytest.raises(MalformedAnswer):
        parse_authorized_keys(body)


def test_failed_logins_window() -> None:
    now = [0.0]
    failures = FailedLogins(2, window=60, clock=lambda: now[0])
    failures.add("127.0.0.5")
    assert failures.blocked_for("127.0.0.5") == 0
    failures.add("127.0.0.5")
    assert failures.blocked_for("127.0.0.5") == 60
    assert failures.blocked_for("127.0.0.6") == 0
    now[0] = 61
    assert failures.blocked_for("127.0.0.5") == 0
