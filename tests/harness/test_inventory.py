"""Inventory parsing: good files load, each mistake is named with file, host and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.inventory import (
    LOCAL,
    HostKind,
    InventoryError,
    KnownHostsPolicy,
    Nesting,
    UnknownHostError,
    load_inventory,
)
from harness.paths import REPO_ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labs.toml"
    path.write_text(text)
    return path


@pytest.fixture
def key(tmp_path: Path) -> Path:
    k = tmp_path / "id_lab"
    k.write_text("not a real key; only its existence is checked here\n")
    return k


def test_local_host_exists_without_any_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SVMVAL_INVENTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    inv = load_inventory(write(tmp_path, ""))
    assert inv.names() == [LOCAL]
    assert inv.get(LOCAL).kind is HostKind.LOCAL
    assert not inv.get(LOCAL).has_hardware


def test_repository_example_parses_and_names_lab1() -> None:
    inv = load_inventory(REPO_ROOT / "labs.toml")
    lab1 = inv.hosts["lab1"]
    assert lab1.device == "0000:6a:01.0"
    assert lab1.nesting is Nesting.IOMMUFD_FLTS
    assert lab1.hugepages * 2 >= lab1.guest_memory_mib


def test_full_ssh_host(tmp_path: Path, key: Path) -> None:
    path = write(
        tmp_path,
        f"""
[hosts.lab1]
address = "10.1.2.3"
port = 2222
user = "ci"
key_file = "{key.name}"
known_hosts = "kh"
device = "0000:3B:00.0"
hugepages = 1024
guest_memory_mib = 2048
""",
    )
    (tmp_path / "kh").write_text("")
    spec = load_inventory(path).get("lab1")
    assert spec.kind is HostKind.SSH
    assert (spec.address, spec.port, spec.user) == ("10.1.2.3", 2222, "ci")
    assert spec.key_file == key  # relative paths resolve against the inventory file
    assert spec.device == "0000:3b:00.0"  # normalised to sysfs' lower case
    assert spec.nesting is Nesting.IOMMUFD_FLTS  # a device implies nesting by default
    assert spec.known_hosts_policy is KnownHostsPolicy.STRICT


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('colour = "blue"', "unknown field 'colour'"),
        ('device = "3b:00.0"', "field 'device': '3b:00.0' is not a PCI address"),
        ("port = 70000", "field 'port': 70000 is outside 1..65535"),
        ('port = "22"', "field 'port' must be a int"),
        ('nesting = "double"', "field 'nesting' must be one of"),
        ('known_hosts_policy = "yolo"', "field 'known_hosts_policy' must be one of"),
        ("guest_memory_mib = 128", "too small"),
        ("hugepages = 10", "cannot back 2048 MiB"),
        ('kind = "serial"', "field 'kind' must be one of"),
    ],
)
def test_each_mistake_is_named(tmp_path: Path, key: Path, body: str, expected: str) -> None:
    path = write(
        tmp_path, f'[hosts.bad]\naddress = "h"\nkey_file = "{key}"\n{body}\n'
    )
    with pytest.raises(InventoryError) as exc:
        load_inventory(path)
    message = str(exc.value)
    assert expected in message
    assert str(path) in message and "host 'bad'" in message


def test_missing_required_fields_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "[hosts.bare]\nuser = 'x'\n")
    with pytest.raises(InventoryError) as exc:
        load_inventory(path)
    assert len(exc.value.problems) == 2
    assert "missing field 'address'" in str(exc.value)
    assert "missing field 'key_file'" in str(exc.value)


def test_duplicate_host_differing_in_case(tmp_path: Path, key: Path) -> None:
    body = f'address = "h"\nkey_file = "{key}"\n'
    path = write(tmp_path, f"[hosts.Lab1]\n{body}[hosts.lab1]\n{body}")
    with pytest.raises(InventoryError, match="duplicate host"):
        load_inventory(path)


def test_toml_syntax_error_names_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[hosts.lab1\n")
    with pytest.raises(InventoryError, match="not valid TOML"):
        load_inventory(path)


def test_missing_key_file_reported_when_host_is_used(tmp_path: Path) -> None:
    path = write(tmp_path, '[hosts.lab2]\naddress = "h"\nkey_file = "nope"\n')
    inv = load_inventory(path)  # other hosts stay usable
    assert inv.get(LOCAL).is_local
    with pytest.raises(InventoryError) as exc:
        inv.get("lab2")
    assert f"file {tmp_path / 'nope'} does not exist" in str(exc.value)
    assert "ssh-keygen" in str(exc.value)


def test_unknown_host_lists_known_names(tmp_path: Path, key: Path) -> None:
    path = write(tmp_path, f'[hosts.lab1]\naddress = "h"\nkey_file = "{key}"\n')
    with pytest.raises(UnknownHostError) as exc:
        load_inventory(path).get("nosuch")
    assert "known hosts: lab1, local" in str(exc.value)


def test_missing_inventory_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_inventory(tmp_path / "absent.toml")


def test_env_variable_selects_inventory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: Path) -> None:
    path = write(tmp_path, f'[hosts.envhost]\naddress = "h"\nkey_file = "{key}"\n')
    monkeypatch.setenv("SVMVAL_INVENTORY", str(path))
    assert "envhost" in load_inventory().names()
