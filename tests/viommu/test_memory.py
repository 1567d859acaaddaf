"""GuestMemory: backings, region maps, q35 layout, typed out-of-range errors."""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.viommu import GuestMemory, MemoryAccessError, Region, q35_regions

GIB = 1 << 30


def test_bytearray_roundtrip_little_endian() -> None:
    mem = GuestMemory(8192)
    mem.write_u64(0x10, 0x1122334455667788)
    assert mem.read(0x10, 8) == bytes.fromhex("8877665544332211")
    assert mem.read_u64(0x10) == 0x1122334455667788
    assert mem.read_u32(0x14) == 0x11223344
    mem.write_u32(0x20, 0xDEADBEEF)
    assert mem.read_qwords(0x18, 2) == (0, 0xDEADBEEF)


def test_out_of_range_raises_typed_error() -> None:
    mem = GuestMemory(4096)
    with pytest.raises(MemoryAccessError) as ei:
        mem.read_u64(4092)
    assert ei.value.gpa == 4092 and ei.value.size == 8
    with pytest.raises(MemoryAccessError):
        mem.write_u64(-8, 1)
    assert not mem.contains(4096)
    assert mem.contains(4088, 8)


def test_bytes_backing_is_read_only() -> None:
    mem = GuestMemory(bytes(4096))
    assert mem.read_u64(0) == 0
    with pytest.raises(MemoryAccessError):
        mem.write_u64(0, 1)


def test_regions_map_gpa_to_offsets() -> None:
    buf = bytearray(3 * 4096)
    mem = GuestMemory(buf, [(0, 0, 4096), (0x1_0000_0000, 4096, 8192)])
    mem.write_u64(0x1_0000_0008, 0xABCD)
    assert int.from_bytes(buf[4096 + 8 : 4096 + 16], "little") == 0xABCD
    with pytest.raises(MemoryAccessError):
        mem.read_u64(4096)  # the hole between regions
    assert mem.size == 3 * 4096


def test_overlapping_regions_rejected() -> None:
    with pytest.raises(ConfigError):
        GuestMemory(8192, [(0, 0, 8192), (4096, 0, 4096)])
    with pytest.raises(ConfigError):
        GuestMemory(4096, [(0, 0, 8192)])


@pytest.mark.parametrize(
    ("ram", "expect"),
    [
        (512 << 20, [Region(0, 0, 512 << 20)]),
        (0xB000_0000 - 4096, [Region(0, 0, 0xB000_0000 - 4096)]),
        # >= 2.75 GiB: 2 GiB below the hole, the rest at 4 GiB.
        (3 * GIB, [Region(0, 0, 2 * GIB), Region(4 * GIB, 2 * GIB, GIB)]),
        (8 * GIB, [Region(0, 0, 2 * GIB), Region(4 * GIB, 2 * GIB, 6 * GIB)]),
    ],
)
def test_q35_split(ram: int, expect: list[Region]) -> None:
    assert q35_regions(ram) == expect


def test_q35_max_ram_below_4g() -> None:
    assert q35_regions(2 * GIB, max_ram_below_4g=GIB) == [
        Region(0, 0, GIB), Region(4 * GIB, GIB, GIB)]


def test_file_backing_shares_with_file(tmp_path: Path) -> None:
    path = tmp_path / "ram"
    path.write_bytes(bytes(1 << 20))
    with GuestMemory.from_file(path) as mem:
        assert mem.regions == (Region(0, 0, 1 << 20),)
        mem.write_u64(0x1000, 0x55AA)
        # Another mapping of the same file sees the write (like QEMU's share=on RAM).
        with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            assert int.from_bytes(mm[0x1000:0x1008], "little") == 0x55AA


def test_file_backing_explicit_regions(tmp_path: Path) -> None:
    path = tmp_path / "ram"
    path.write_bytes(bytes(8192))
    with GuestMemory.from_file(path, regions=[(0, 0, 4096), (4 * GIB, 4096, 4096)]) as mem:
        mem.write_u64(4 * GIB, 7)
        assert path.read_bytes()[4096] == 7
        with pytest.raises(MemoryAccessError):
            mem.read_u64(4096)


def test_file_errors_name_the_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        GuestMemory.from_file(tmp_path / "nope")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ConfigError, match="empty"):
        GuestMemory.from_file(tmp_path / "empty")
