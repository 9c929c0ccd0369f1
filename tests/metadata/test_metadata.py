"""The metadata service answers only VMs; anyone else gets the documented 403 error."""

from __future__ import annotations

import json

import pytest

from tests.framework import openapi
from tests.framework.platform import Platform

pytestmark = pytest.mark.netns


@pytest.mark.parametrize(
    "path", ["/v1/vm", "/latest/meta-data/hostname", "/latest/meta-data/public-keys/0/openssh-key"]
)
def test_metadata_unknown_address_forbidden(platform: Platform, path: str) -> None:
    result = platform.curl(f"http://127.0.0.1:8083{path}")
    assert result.status == 403
    document = json.loads(result.stdout)
    openapi.validate("metadata.yaml", "Error", document)
    assert document["error"]["code"] == "permission_denied"


def test_metadata_host_keys_unknown_address(platform: Platform) -> None:
    result = platform.curl(
        "http://127.0.0.1:8083/v1/host-keys", "-X", "POST", "-H", "Content-Type: application/json",
        "--data", '{"keys": ["ssh-ed25519 AAAA"]}',
    )  # fmt: skip
    assert result.status == 403
