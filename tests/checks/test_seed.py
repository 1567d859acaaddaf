"""The seeded bugs find a first-stage leaf as the model's walk does, and put it back."""

from __future__ import annotations

import pytest

from harness.checks.seed import first_stage_leaf, restore_pte, retarget_pte
from harness.viommu import FsTables, GuestMemory, PasidEntry, Pgtt, TableBuilder
from harness.viommu.first_stage import FS_XD

SID = 0x0018  # 00:03.0, RID_PASID 0 as Linux programs it
GVA_4K, GVA_2M, GVA_HIGH = 0x7F12_3456_7000, 0x4000_0000, 0xFFFF_8000_0000_0000


@pytest.fixture
def tables() -> tuple[GuestMemory, TableBuilder, FsTables]:
    mem = GuestMemory(32 << 20)
    b = TableBuilder(mem, scalable=True)
    fs = b.fs_tables(4)
    b.set_sm_context(SID, dte=1, pre=1)
    b.set_pasid_entry(SID, 0, PasidEntry(p=1, pgtt=Pgtt.FIRST_STAGE, did=1, flptptr=fs.root, aw=2))
    fs.map(GVA_4K, 0x20_0000, xd=True, user=False)  # XD and supervisor-only: found all the same
    fs.map(GVA_2M, 0x40_0000, size=2 << 20, writable=False)
    fs.map(GVA_HIGH, 0x60_0000)
    return mem, b, fs


@pytest.mark.parametrize(("gva", "level"), [(GVA_4K, 1), (GVA_2M + 0x1234, 2), (GVA_HIGH, 1)])
def test_the_leaf_is_the_entry_the_tables_hold(tables: tuple[GuestMemory, TableBuilder, FsTables],
                                               gva: int, level: int) -> None:
    mem, b, fs = tables
    at, value = first_stage_leaf(mem, b.root, SID, gva)
    assert at == fs.entry_address(gva, level, create=False) and value == mem.read_u64(at)
    if level == 2:
        assert value & 0x80  # PS: the 2 MiB leaf, not a table below it
    if gva == GVA_4K:
        assert value & FS_XD


def test_unmapped_and_absent_are_lookup_errors(tables: tuple[GuestMemory, TableBuilder, FsTables]) -> None:
    mem, b, _fs = tables
    with pytest.raises(LookupError):
        first_stage_leaf(mem, b.root, SID, 0x1000)
    with pytest.raises(LookupError):
        first_stage_leaf(mem, b.root, 0x0100, GVA_4K)  # bus 1: no root entry


def test_retarget_then_restore(tables: tuple[GuestMemory, TableBuilder, FsTables]) -> None:
    mem, b, _fs = tables
    at, old = first_stage_leaf(mem, b.root, SID, GVA_4K)
    seeded = retarget_pte(mem, b.root, SID, GVA_4K, 0x80_0000)
    assert (seeded.address, seeded.old) == (at, old)
    assert mem.read_u64(at) == seeded.new == (old & ~0x000F_FFFF_FFFF_F000) | 0x80_0000
    restore_pte(mem, seeded)
    assert mem.read_u64(at) == old
