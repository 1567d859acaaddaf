"""Property tests for queued invalidation and staleness."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.viommu import GuestMemory, PasidEntry, Pgtt, Reg, TableBuilder, VtdModel
from harness.viommu.builder import FsTables, SsTables
from harness.viommu.invalidation import (
    cc_desc,
    devtlb_desc,
    iec_desc,
    iotlb_desc,
    pc_desc,
    pdevtlb_desc,
    piotlb_desc,
    prg_resp_desc,
    wait_desc,
)
from harness.viommu.registers import Fsts, Gcmd

SID, PASID, DID = 0x0018, 0x42, 7
QBASE, STATUS = 0x60_0000, 0x70_0000
u16 = st.integers(0, 0xFFFF)
pasid_s = st.integers(0, (1 << 20) - 1)
addr_s = st.integers(0, (1 << 52) - 1).map(lambda a: a & ~0xFFF)

valid_desc = st.one_of(
    st.builds(cc_desc, st.integers(1, 3), u16, u16, st.integers(0, 3)),
    st.builds(iotlb_desc, st.integers(1, 3), u16, addr_s, st.integers(0, 18), st.integers(0, 1)),
    st.builds(devtlb_desc, u16, addr_s, st.integers(0, 1)),
    st.builds(iec_desc, st.integers(0, 1), u16, st.integers(0, 31)),
    st.builds(lambda sw, i, d: wait_desc(sw=sw, if_=i, status_data=d, status_addr=STATUS),
              st.integers(0, 1), st.integers(0, 1), st.integers(0, 0xFFFF_FFFF)),
    st.builds(piotlb_desc, st.integers(2, 3), u16, pasid_s, addr_s, st.integers(0, 18)),
    st.builds(pc_desc, st.sampled_from([0, 1, 3]), u16, pasid_s),
    st.builds(lambda s, p, g, a: pdevtlb_desc(s, p, g=g, addr=a), u16, pasid_s,
              st.integers(0, 1), addr_s),
    st.builds(prg_resp_desc, u16, st.integers(0, 0x1FF), st.integers(0, 15),
              st.one_of(st.none(), pasid_s)),
)
q64 = st.integers(0, (1 << 64) - 1)
garbage = st.tuples(q64, q64, q64, q64)
any_desc = st.one_of(valid_desc, valid_desc, garbage)


def _setup(wide: bool) -> tuple[VtdModel, TableBuilder, Any]:
    mem = GuestMemory(8 << 20)
    b = TableBuilder(mem, 0x10_0000, 0x50_0000)
    fs = b.fs_tables(4)
    fs.map(0x1000, 0x20_0000)
    b.set_sm_context(SID, pre=1, dte=1)
    b.set_pasid_entry(SID, PASID, PasidEntry(p=1, pgtt=Pgtt.FIRST_STAGE, did=DID,
                                             flptptr=fs.root))
    m = VtdModel(mem)
    m.enable(b.root)
    m.write_reg(Reg.IQA, QBASE | (int(wide) << 11), 8)
    m.write_reg(Reg.GCMD, Gcmd.TE | Gcmd.QIE)
    m.write_reg(Reg.PQA, 0x78_0000, 8)
    return m, b, fs


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.lists(st.lists(any_desc, min_size=1, max_size=8), max_size=6),
       st.booleans())
def test_random_descriptor_sequences_never_crash(wide: bool, batches: list[list[Any]],
                                                 clear_errors: bool) -> None:
    m, _b, _fs = _setup(wide)
    shift = 5 if wide else 4
    size = 1 << (8 - int(wide))
    for batch in batches:
        m.page_request(SID, 0x1000, pasid=PASID, prgi=1)
        tail = m.read_reg(Reg.IQT, 8) >> shift
        for d in batch:
            for i, v in enumerate(d[: 4 if wide else 2]):
                m.memory.write_u64(QBASE + (tail << shift) + 8 * i, v)
            tail = (tail + 1) % size
        m.write_reg(Reg.IQT, tail << shift, 8)
        head = m.read_reg(Reg.IQH, 8)
        assert head % (1 << shift) == 0 and head >> shift < size
        fsts = m.read_reg(Reg.FSTS)
        if not fsts & (Fsts.IQE | Fsts.ITE):
            assert head == tail << shift  # everything ran
        elif clear_errors:
            # Skip the bad descriptor the way software would: overwrite it with a wait.
            for i, v in enumerate(wait_desc()):
                if i < (4 if wide else 2):
                    m.memory.write_u64(QBASE + head + 8 * i, v)
            m.write_reg(Reg.FSTS, fsts)
        t = m.translate(SID, 0x1000, pasid=PASID)
        assert t.ok or t.fault is not None


# ---------------------------------------------------------------------------- staleness
change = st.sampled_from(["remap", "unmap", "readonly"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stage=st.sampled_from(["fs", "ss", "nested"]),
    pages=st.lists(st.integers(1, 64), min_size=1, max_size=6, unique=True),
    victim=st.integers(0, 5),
    what=change,
    invalidate=st.booleans(),
)
def test_change_is_stale_exactly_without_invalidation(stage: str, pages: list[int], victim: int,
                                                      what: str, invalidate: bool) -> None:
    mem = GuestMemory(8 << 20)
    b = TableBuilder(mem, 0x10_0000, 0x70_0000)
    m = VtdModel(mem)  # CM=1
    b.set_sm_context(SID)
    tables: FsTables | SsTables
    if stage == "fs":
        tables = b.fs_tables(4)
        pe = PasidEntry(p=1, pgtt=Pgtt.FIRST_STAGE, did=DID, flptptr=tables.root)
    elif stage == "ss":
        tables = b.ss_tables(4)
        pe = PasidEntry(p=1, pgtt=Pgtt.SECOND_STAGE, did=DID, aw=2, slptptr=tables.root)
    else:
        ss = b.ss_tables(4)
        tables = b.fs_tables(4, ss=ss, gpa_offset=0x40_0000_0000)
        for p in range(1, 70):
            ss.map(0x100_0000 + p * 4096, 0x200_0000 + p * 4096)
        pe = PasidEntry(p=1, pgtt=Pgtt.NESTED, did=DID, aw=2, slptptr=ss.root,
                        flptptr=tables.root)
    out = 0x100_0000 if stage == "nested" else 0x200_0000

    def map_page(p: int, target: int, writable: bool = True) -> None:
        if isinstance(tables, SsTables):  # stage == "ss"
            tables.map(p * 4096, target + p * 4096, w=writable)
        else:
            tables.map(p * 4096, target + p * 4096, writable=writable)

    for p in pages:
        map_page(p, out)
    b.set_pasid_entry(SID, PASID, pe)
    m.enable(b.root)
    m.write_reg(Reg.IQA, QBASE | (1 << 11), 8)
    m.write_reg(Reg.GCMD, Gcmd.TE | Gcmd.QIE)
    for p in pages:
        assert m.translate(SID, p * 4096, pasid=PASID, write=True).ok
    v = pages[victim % len(pages)]
    if what == "remap":
        map_page(v, out + 0x1000 * 70 if stage != "nested" else out + 4096)
    elif what == "unmap":
        tables.unmap(v * 4096)
    else:
        map_page(v, out, writable=False)
    if invalidate:
        # The invalidation software must issue for this kind of mapping.
        d = (iotlb_desc(3, did=DID, addr=v * 4096) if stage == "ss"
             else piotlb_desc(3, DID, PASID, addr=v * 4096))
        for i, q in enumerate(d):
            mem.write_u64(QBASE + 8 * i, q)
        m.write_reg(Reg.IQT, 32, 8)
        assert not m.read_reg(Reg.FSTS) & Fsts.IQE
    for p in pages:
        stale = m.is_stale(SID, p * 4096, PASID, write=True)
        assert stale is (p == v and not invalidate), (p, v, what)
