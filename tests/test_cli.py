"""The `ussycode` command line: invalid settings stop it before anything starts."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from tests.framework.platform import USSYCODE


def run(*argv: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [USSYCODE, *argv, "--env-file", str(env_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--subnet", "10.0.0.0/33"), ("--ssh-addr", "nope"), ("--vm-memory", "lots"), ("--domain", "x")],
)
def test_cli_serve_invalid_setting(tmp_path: Path, flag: str, value: str) -> None:
    result = run("serve", flag, value, "--data-dir", str(tmp_path / "data"), env_file=tmp_path / "none.env")
    assert result.returncode == 2
    assert f"invalid {flag}" in result.stderr
    assert repr(value) in result.stderr
    assert not (tmp_path / "data").exists()


def test_cli_serve_invalid_env_file_value(tmp_path: Path) -> None:
    env_file = tmp_path / "ussycode.env"
    env_file.write_text("USSYCODE_VM_CPUS=zero\n")
    result = run("serve", "--data-dir", str(tmp_path / "data"), env_file=env_file)
    assert result.returncode == 2
    assert "USSYCODE_VM_CPUS" in result.stderr
    assert f"env file {env_file}" in result.stderr


def test_cli_image_list_empty(tmp_path: Path) -> None:
    result = run("image", "list", "--image-dir", str(tmp_path / "images"), env_file=tmp_path / "none.env")
    assert result.returncode == 0
    assert "no images in" in result.stdout


def test_cli_exec_without_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [USSYCODE, "exec", "ls"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "missing token" in result.stderr


def test_exec_inlines_setup_script(tmp_path: Path) -> None:
    from ussycode.cli import inline_setup_script

    script = tmp_path / "setup.sh"
    script.write_text("echo one\necho 'two'\n")
    inlined = inline_setup_script(f"new --name api --setup-script {script} --json")
    assert shlex.split(inlined) == [
        "new",
        "--name",
        "api",
        "--setup-script",
        "echo one\necho 'two'\n",
        "--json",
    ]
    with_equals = inline_setup_script(f"new --setup-script={script}")
    assert shlex.split(with_equals) == ["new", "--setup-script=echo one\necho 'two'\n"]
    assert inline_setup_script("new --setup-script -") == "new --setup-script -"
    assert inline_setup_script("ls -l") == "ls -l"


def test_exec_inline_missing_script(tmp_path: Path) -> None:
    from ussycode.cli import inline_setup_script
    from ussycode.errors import UssycodeError

    with pytest.raises(UssycodeError, match="cannot read the setup script"):
        inline_setup_script(f"new --setup-script {tmp_path / 'missing.sh'}")
