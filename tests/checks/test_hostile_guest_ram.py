"""A guest-RAM file shorter than the guest's memory: an error naming the file, before
any walk reads past its end (where the model would fault every access as unbacked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.viommu import GuestMemory
from harness.viommu.memory import q35_regions


def test_a_guest_ram_file_shorter_than_the_guest_is_an_error_naming_the_file(tmp_path: Path) -> None:
    ram = tmp_path / "guest-ram"
    ram.write_bytes(bytes(64 << 20))  # a 64 MiB file for a 2 GiB guest (file cut short)
    with pytest.raises(ConfigError, match=rf"guest memory file {ram} is 0x4000000 bytes, shorter than "
                                          r"the guest's RAM \(0x80000000 bytes\)"):
        GuestMemory.from_file(ram, regions=q35_regions(2048 << 20), writable=False)


def test_a_guest_ram_file_of_the_guest_size_maps(tmp_path: Path) -> None:
    ram = tmp_path / "guest-ram"
    ram.write_bytes(bytes(4 << 20))
    with GuestMemory.from_file(ram, regions=q35_regions(4 << 20), writable=False) as mem:
        assert mem.size == 4 << 20 and mem.read_u64((4 << 20) - 8) == 0
