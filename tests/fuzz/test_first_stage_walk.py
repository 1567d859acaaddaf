"""The model's first-stage walk over random guest memory: a translation or a fault,
never an exception. The structures above the walk are real (a PASID entry pointing at
the first-stage root); the page tables themselves are random words."""

from __future__ import annotations

import pytest
from fuzzcount import counted, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from harness.viommu import FaultReason, GuestMemory, PasidEntry, Pgtt, TableBuilder, VtdModel
from harness.viommu.faults import WalkFault
from harness.viommu.first_stage import FsParams, fs_walk

pytestmark = pytest.mark.fuzz

SID, PASID, MEM = 0x0018, 0x42, 4 << 20
TABLES = 0x20_0000  # the random page tables live in the upper 2 MiB
qword = st.integers(0, (1 << 64) - 1)
# An entry that points back into the tables most of the time (so walks go deep), or any bits.
entry = st.one_of(qword, st.builds(lambda page, flags: TABLES + (page << 12) | flags,
                                   st.integers(0, 511), st.integers(0, 0xFFF)))
words = st.dictionaries(st.integers(0, (MEM - TABLES) // 8 - 1), entry, max_size=64)
address = st.one_of(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 48) - 1))


def _fill(mem: GuestMemory, at: dict[int, int]) -> None:
    for i, v in at.items():
        mem.write_u64(TABLES + 8 * i, v)


@fuzz_settings()
@given(words, st.lists(address, min_size=1, max_size=4), st.booleans(), st.booleans(),
       st.booleans(), st.integers(0, 1))
@counted
def test_model_walk_over_random_tables_translates_or_faults(at: dict[int, int], addrs: list[int], write: bool,
                                                           execute: bool, priv: bool, flpm: int) -> None:
    mem = GuestMemory(MEM)
    model = VtdModel(mem)
    b = TableBuilder(mem, 0x10_0000, TABLES, scalable=True)
    b.set_sm_context(SID)
    b.set_pasid_entry(SID, PASID, PasidEntry(p=1, pgtt=Pgtt.FIRST_STAGE, did=7, flptptr=TABLES, aw=2, flpm=flpm))
    model.enable(b.root, scalable=True)
    _fill(mem, at)
    for a in addrs:
        t = model.walk(SID, a, pasid=PASID, write=write, execute=execute, privileged=priv)
        assert t.ok == (t.fault is None)
        assert t.ok or isinstance(t.fault, FaultReason)
        t2 = model.translate(SID, a, pasid=PASID, write=write, execute=execute, privileged=priv)
        assert t2.ok == (t2.fault is None)


@fuzz_settings()
@given(words, address, st.booleans(), st.booleans(), st.integers(0, 1), st.integers(39, 52))
@counted
def test_fs_walk_over_random_tables_returns_or_raises_a_walk_fault(at: dict[int, int], a: int, write: bool,
                                                                  nxe: bool, flpm: int, haw: int) -> None:
    mem = GuestMemory(MEM)
    _fill(mem, at)
    p = FsParams.make(TABLES, flpm=flpm, haw=haw, nxe=nxe)
    try:
        r = fs_walk(mem, p, a, write=write)
    except WalkFault as f:
        assert isinstance(f.reason, FaultReason)
    else:
        assert r.page_size in (1 << 12, 1 << 21, 1 << 30)
