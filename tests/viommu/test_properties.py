"""Property tests: random valid mappings translate to what was mapped; garbage never crashes."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.viommu import FaultReason, GuestMemory, PasidEntry, Pgtt, TableBuilder, VtdModel

SID = 0x0018
PASID = 0x42
SIZES = [4096, 1 << 21, 1 << 30]
SLOT = 1 << 30  # every mapping gets its own 1 GiB-aligned input slot
PROP = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _rig(scalable: bool = True, **cfg: Any) -> tuple[GuestMemory, VtdModel, TableBuilder]:
    mem = GuestMemory(8 << 20)
    return mem, VtdModel(mem, **cfg), TableBuilder(mem, 0x10_0000, 8 << 20, scalable=scalable)


mapping = st.tuples(
    st.sampled_from(SIZES),  # page size
    st.integers(0, (1 << 45) // SLOT - 1),  # output slot (aligned to 1G, fits any size)
    st.integers(0, SLOT - 1),  # offset probed inside the page (reduced mod size)
    st.booleans(),  # writable
)
mappings = st.lists(mapping, min_size=1, max_size=6)


def _probe(model: VtdModel, maps: list[tuple[int, int, int, bool]], pasid: int | None,
           base: int = 0) -> None:
    for i, (size, out_slot, off, writable) in enumerate(maps):
        va = base + (i + 1) * SLOT
        off %= size
        expect = out_slot * SLOT + off
        t = model.translate(SID, va + off, pasid=pasid)
        assert t.ok, t
        assert (t.address, t.page_size) == (expect, size)
        # Second time from the IOTLB: same answer. A page whose output covers the
        # interrupt window (0xFEEx_xxxx) is walked each time: the model does not cache it.
        t2 = model.translate(SID, va + off, pasid=pasid)
        covers_interrupts = out_slot * SLOT <= 0xFEE0_0000 < out_slot * SLOT + size
        assert t2.address == expect and (covers_interrupts or t2.source == "iotlb")
        tw = model.translate(SID, va + off, pasid=pasid, write=True)
        assert tw.ok is writable
        if not writable:
            assert tw.fault in (FaultReason.SM_WRITE_DENIED, FaultReason.WRITE_DENIED)


@PROP
@given(mappings)
def test_first_stage_mappings(maps: list[tuple[int, int, int, bool]]) -> None:
    mem, m, b = _rig()
    fs = b.fs_tables(4)
    for i, (size, out_slot, _off, w) in enumerate(maps):
        fs.map((i + 1) * SLOT, out_slot * SLOT, size, writable=w)
    b.set_sm_context(SID)
    b.set_pasid_entry(SID, PASID, PasidEntry(p=1, pgtt=Pgtt.FIRST_STAGE, did=3,
                                             flptptr=fs.root))
    m.enable(b.root)
    _probe(m, maps, PASID)


@PROP
@given(mappings, st.booleans())
def test_second_stage_mappings(maps: list[tuple[int, int, int, bool]], legacy: bool) -> None:
    mem, m, b = _rig(scalable=not legacy)
    ss = b.ss_tables(4)
    for i, (size, out_slot, _off, w) in enumerate(maps):
        ss.map((i + 1) * SLOT, out_slot * SLOT, size, w=w)
    if legacy:
        b.set_legacy_context(SID, slptptr=ss.root, aw=2, did=4)
    else:
        b.set_sm_context(SID)
        b.set_pasid_entry(SID, PASID, PasidEntry(p=1, pgtt=Pgtt.SECOND_STAGE, did=4, aw=2,
                                                 slptptr=ss.root))
    m.enable(b.root, scalable=not legacy)
    _probe(m, maps, None if legacy else PASID)


@PROP
@given(st.lists(st.tuples(st.sampled_from(SIZES), st.sampled_from(SIZES),
                          st.integers(0, (1 << 45) // SLOT - 1), st.integers(0, SLOT - 1),
                          st.booleans(), st.booleans()), min_size=1, max_size=5))
def test_nested_mappings(maps: list[tuple[int, int, int, int, bool, bool]]) -> None:
    mem, m, b = _rig()
    ss = b.ss_tables(4)
    fs = b.fs_tables(4, ss=ss, gpa_offset=0x40_0000_0000)
    for i, (s1, s2, out_slot, _off, w1, w2) in enumerate(maps):
        gpa = (i + 1) * SLOT
        fs.map(0x7F00_0000_0000 + i * SLOT, gpa, s1, writable=w1)
        ss.map(gpa, out_slot * SLOT, s2, w=w2)
    b.set_sm_context(SID)
    b.set_pasid_entry(SID, PASID, PasidEntry(p=1, pgtt=Pgtt.NESTED, did=5, aw=2,
                                             slptptr=ss.root, flptptr=fs.root))
    m.enable(b.root)
    for i, (s1, s2, out_slot, off, w1, w2) in enumerate(maps):
        off %= min(s1, s2)
        t = m.translate(SID, 0x7F00_0000_0000 + i * SLOT + off, pasid=PASID)
        assert t.ok and t.address == out_slot * SLOT + off and t.page_size == min(s1, s2)
        tw = m.translate(SID, 0x7F00_0000_0000 + i * SLOT + off, pasid=PASID, write=True)
        assert tw.ok is (w1 and w2)


qword = st.integers(0, (1 << 64) - 1)
# Mostly-valid values with a few random bits flipped exercise more of each checker.
noise = st.one_of(qword, st.integers(0, 63).map(lambda b: 1 << b))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(["legacy", "fs", "ss", "nested", "pt"]),
    targets=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 7), noise, st.booleans()),
                     max_size=6),
    addr=st.one_of(st.integers(0, (1 << 64) - 1), st.integers(0, 0x8000_0000)),
    pasid=st.one_of(st.none(), st.integers(0, (1 << 20) - 1), st.just(PASID)),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_garbage_never_crashes(mode: str, targets: list[tuple[int, int, int, bool]],
                               addr: int, pasid: int | None,
                               flags: tuple[bool, bool, bool]) -> None:
    legacy = mode == "legacy"
    mem, m, b = _rig(scalable=not legacy)
    va = 0x1000
    structures: list[int] = []
    if legacy:
        ss = b.ss_tables(4)
        ss.map(va, 0x20_0000)
        structures.append(b.set_legacy_context(SID, slptptr=ss.root, aw=2))
        structures += [ss.entry_address(va, lvl, create=False) for lvl in (4, 3, 2, 1)]
    else:
        b.set_sm_context(SID)
        structures.append(b.context_entry_address(SID))
        pe = PasidEntry(p=1, pgtt={"fs": 1, "ss": 2, "nested": 3, "pt": 4}[mode], did=2, aw=2)
        if mode in ("ss", "nested"):
            ss = b.ss_tables(4)
            pe = PasidEntry(**{**_asdict(pe), "slptptr": ss.root})
        if mode in ("fs", "nested"):
            fs = b.fs_tables(4, ss=ss if mode == "nested" else None,
                             gpa_offset=0x40_0000_0000 if mode == "nested" else 0)
            fs.map(va, 0x9000_0000 if mode == "nested" else 0x20_0000)
            pe = PasidEntry(**{**_asdict(pe), "flptptr": fs.root})
            structures += [fs.entry_address(va, lvl, create=False) for lvl in (4, 3, 2, 1)]
        if mode == "nested":
            ss.map(0x9000_0000, 0x20_0000)
        if mode == "ss":
            ss.map(va, 0x20_0000)
            structures += [ss.entry_address(va, lvl, create=False) for lvl in (4, 3, 2, 1)]
        structures.append(b.set_pasid_entry(SID, PASID, pe))
        structures.append(b._pasid_dirs[SID] + (PASID >> 6) * 8)
    structures.append(b.root)
    m.enable(b.root, scalable=not legacy)
    write, execute, priv = flags
    before = m.translate(SID, va, pasid=None if legacy else PASID)
    assert before.ok, before
    for which, qw, value, xor in targets:
        base = structures[which % len(structures)]
        at = base + 8 * qw
        if not mem.contains(at, 8):
            continue
        b.write_u64(at, (mem.read_u64(at) ^ value) if xor else value)
    for a in (addr, va, va + 0x10):
        for t in (m.translate(SID, a, pasid=pasid, write=write, execute=execute,
                              privileged=priv),
                  m.walk(SID, a, pasid=pasid, write=write, execute=execute, privileged=priv)):
            assert t.ok or t.fault is None or isinstance(t.fault, FaultReason)
            if t.ok:
                assert t.address is not None and t.page_size in (4096, 1 << 21, 1 << 30)
            else:
                assert t.address is None


def _asdict(pe: PasidEntry) -> dict[str, int]:
    import dataclasses
    return {f.name: getattr(pe, f.name) for f in dataclasses.fields(pe)}
