"""Shared fixtures: a running platform in its own network namespace, kept logs on failure."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.framework.platform import Platform, image_dir


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces, bridges and TAP devices")


def require_image() -> None:
    if not any(image_dir().glob("ussyuntu/*/manifest.json")):
        pytest.fail(f"no guest image in {image_dir()}: run scripts/test.sh, which builds it first")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        item.stash.setdefault(FAILED, True)  # type: ignore[arg-type]


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def platform(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Platform]:
    """A platform with no VMs yet, removed with everything it started after the test."""
    require_root()
    with Platform(tmp_path) as running:
        yield running
        if request.node.stash.get(FAILED, False):
            running.keep_logs(request.node.name)
