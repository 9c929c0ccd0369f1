from __future__ import annotations

import pytest

from ussycode.errors import InvalidInput
from ussycode.names import check_handle, check_vm_name, generate_name


@pytest.mark.parametrize("name", ["mild-owl", "abc", "vm-2", "a" * 32])
def test_vm_name_valid(name: str) -> None:
    assert check_vm_name(name) == name


@pytest.mark.parametrize(
    "name", ["Bad_Name", "ab", "-owl", "owl-", "a--b", "1owl", "a" * 33, "www", "mild owl", ""]
)
def test_vm_name_invalid(name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid VM name"):
        check_vm_name(name)


@pytest.mark.parametrize("handle", ["Alice", "al", "root", "a b"])
def test_handle_invalid(handle: str) -> None:
    with pytest.raises(InvalidInput, match="invalid handle"):
        check_handle(handle)


def test_generate_name_avoids_taken() -> None:
    taken = set()
    for _ in range(30):
        name = generate_name(lambda n: n in taken)
        assert name not in taken
        check_vm_name(name)
        taken.add(name)


def test_generate_name_gives_up() -> None:
    with pytest.raises(InvalidInput, match="--name"):
        generate_name(lambda n: True, attempts=4)
