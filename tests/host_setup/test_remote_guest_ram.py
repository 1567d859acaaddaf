"""Guest RAM on a lab host, read over SFTP through a real sshd: a file shorter than the
guest's memory is an error naming the file and both sizes (as GuestMemory.from_file
says locally), never a struct.error or a short read taken for a smaller value."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest
from support.sshd import Sshd

from harness.errors import ConfigError
from harness.inventory import load_inventory
from harness.remote import SshTarget
from host_setup.provision import Journal, LabHost
from host_setup.remote_vm import RemoteMachine

MIB = 1 << 20


def _machine(sshd: Sshd, t: SshTarget, ram: Path, memory_mib: int) -> RemoteMachine:
    host = load_inventory(sshd.inventory()).get("sshtest")
    lab = LabHost(t, host, Journal("test-run", "test", "2026-12-02T00:00:00Z"))
    return RemoteMachine(t, lab, PurePosixPath(ram.parent), memory_mib, PurePosixPath(ram))


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def test_a_remote_guest_ram_file_shorter_than_the_guest_is_an_error_naming_it(
        sshd: Sshd, tmp_path: Path) -> None:
    ram = _sparse(tmp_path / "guest-ram", 64 * MIB)  # the file QEMU wrote for a 64 MiB guest
    with SshTarget(load_inventory(sshd.inventory()).get("sshtest")) as t:
        machine = _machine(sshd, t, ram, 128)  # ...read as a 128 MiB one
        with pytest.raises(ConfigError, match=rf"guest memory file sshtest:{ram} is 0x4000000 bytes, "
                                              r"shorter than the guest's RAM \(0x8000000 bytes\)"):
            machine.guest_memory()


def test_a_missing_remote_guest_ram_file_is_an_error_naming_it(sshd: Sshd, tmp_path: Path) -> None:
    with SshTarget(load_inventory(sshd.inventory()).get("sshtest")) as t:
        machine = _machine(sshd, t, tmp_path / "no-such-ram", 128)
        with pytest.raises(ConfigError, match=rf"guest memory file sshtest:{tmp_path}/no-such-ram cannot be read"):
            machine.guest_memory()


def test_a_remote_guest_ram_file_cut_during_the_run_is_an_error_not_a_short_read(
        sshd: Sshd, tmp_path: Path) -> None:
    ram = _sparse(tmp_path / "guest-ram", 128 * MIB)
    with ram.open("r+b") as f:
        f.seek(100 * MIB)
        f.write((0x1234_5678_9ABC_DEF0).to_bytes(8, "little"))
    with SshTarget(load_inventory(sshd.inventory()).get("sshtest")) as t:
        memory = _machine(sshd, t, ram, 128).guest_memory()
        assert memory.read_u64(100 * MIB) == 0x1234_5678_9ABC_DEF0  # the whole file reads
        os.truncate(ram, 96 * MIB)  # the file replaced or cut while the guest ran
        with pytest.raises(ConfigError, match=rf"guest memory file sshtest:{ram} has nothing at offset 0x7800000: "
                                              r"it is now 0x6000000 bytes, shorter than the guest's RAM "
                                              r"\(0x8000000 bytes\)"):
            memory.read_qwords(120 * MIB, 4)
