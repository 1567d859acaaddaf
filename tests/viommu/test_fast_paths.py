"""The nested walk's fast paths (straight-line per address, numpy per batch) give exactly
what the plain walkers give: same translations and faults, same A/D bits left in
memory. The plain walkers are the reference: the fast paths are switched off for it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import harness.viommu.model as model_mod
import harness.viommu.nested as nested_mod
from harness.viommu import GuestMemory, PasidEntry, Pgtt, TableBuilder, VtdModel

SID, PASID = 0x0018, 0x42
VA0, GPA0 = 0x7F00_0000_0000, 0x1_0000_0000
SIZES = [4096, 1 << 21]

lane = st.tuples(
    st.sampled_from(SIZES), st.sampled_from(SIZES),  # first- and second-stage page size
    st.booleans(), st.booleans(),  # writable at each stage
    st.booleans(), st.booleans(),  # A and D already set in the first-stage leaf
    st.booleans(), st.booleans(),  # A and D already set in the second-stage leaf
    st.booleans(),  # mapped at all
)


@contextmanager
def plain_walkers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with monkeypatch.context() as m:
        m.setattr(nested_mod, "_nested_walk_fast", lambda *a, **k: None)
        m.setattr(model_mod, "nested_walk_batch", lambda *a, **k: None)
        yield


# (fs page size, ss page size, fs writable, ss writable, fs A, fs D, ss A, ss D, mapped)
Lane = tuple[int, int, bool, bool, bool, bool, bool, bool, bool]


def _rig(lanes: list[Lane], flips: list[tuple[int, int]]) -> tuple[VtdModel, list[int], GuestMemory]:
    mem = GuestMemory(16 << 20)
    b = TableBuilder(mem, 0x10_0000, 16 << 20)
    ss = b.ss_tables(4)
    fs = b.fs_tables(4, ss=ss, gpa_offset=0x40_0000_0000)
    addrs = []
    for i, (s1, s2, w1, w2, a, d, a2, d2, mapped) in enumerate(lanes):
        va, gpa = VA0 + i * (1 << 21), GPA0 + i * (1 << 21)
        if mapped:
            fs.map(va, gpa, int(s1), writable=bool(w1), accessed=bool(a), dirty=bool(d))
            ss.map(gpa, 0x80_0000 + i * (1 << 21), int(s2), w=bool(w2), accessed=bool(a2), dirty=bool(d2))
        addrs.append(va + 0x123)
    b.set_sm_context(SID)
    b.set_pasid_entry(SID, PASID, PasidEntry(p=1, pgtt=Pgtt.NESTED, did=3, aw=2,
                                             slptptr=ss.root, flptptr=fs.root))
    pages = [p for p, _ in b.written_pages()]
    for which, bit in flips:  # garbage in some table entry: reserved bits, cleared P/R/W...
        page = pages[which % len(pages)]
        at = page + 8 * ((bit * 37) % 512)
        mem.write_u64(at, mem.read_u64(at) ^ (1 << bit))
    m = VtdModel(mem)
    m.enable(b.root)
    return m, addrs, mem


def _outcome(t: Any) -> tuple[Any, ...]:
    return (t.ok, t.address, t.page_size, t.fault, getattr(t, "level", None))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lanes=st.lists(lane, min_size=1, max_size=12),
       flips=st.lists(st.tuples(st.integers(0, 64), st.integers(0, 63)), max_size=3),
       write=st.booleans(), update_ad=st.booleans())
def test_fast_nested_walks_equal_the_plain_walkers(
    monkeypatch: pytest.MonkeyPatch, lanes: list[Lane], flips: list[tuple[int, int]],
    write: bool, update_ad: bool,
) -> None:
    fast_model, addrs, fast_mem = _rig(lanes, flips)
    one_model, _, one_mem = _rig(lanes, flips)
    plain_model, _, plain_mem = _rig(lanes, flips)
    # A read pass first: it sets the A bits a fresh table lacks (the fast paths leave
    # those walks to the plain walker), so the passes after it run on the fast paths,
    # a write one among them with D bits still to set.
    for pass_write in (False, write, write):
        kw: dict[str, Any] = {"pasid": PASID, "write": pass_write, "update_ad": update_ad}
        batch = fast_model.walk_many(SID, addrs, **kw)
        singles = [one_model.walk(SID, a, **kw) for a in addrs]
        with plain_walkers(monkeypatch):
            reference = plain_model.walk_many(SID, addrs, **kw)
        assert [_outcome(t) for t in batch] == [_outcome(t) for t in reference]
        assert [_outcome(t) for t in singles] == [_outcome(t) for t in reference]
        # A/D updates: the same bits in the same entries.
        assert fast_mem.read(0, 16 << 20) == plain_mem.read(0, 16 << 20) == one_mem.read(0, 16 << 20)


def test_the_fast_paths_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The equivalence above means something only if the fast paths run at all."""
    calls = {"batch": 0, "single": 0}
    real_batch, real_single = model_mod.nested_walk_batch, nested_mod._nested_walk_fast

    def batch(*a: Any, **k: Any) -> Any:
        calls["batch"] += 1
        return real_batch(*a, **k)

    def single(*a: Any, **k: Any) -> Any:
        calls["single"] += 1
        return real_single(*a, **k)

    monkeypatch.setattr(model_mod, "nested_walk_batch", batch)
    monkeypatch.setattr(nested_mod, "_nested_walk_fast", single)
    m, addrs, _ = _rig([(4096, 4096, True, True, True, True, True, True, True)] * 4, [])
    assert all(t.ok for t in m.walk_many(SID, addrs, pasid=PASID))  # sets the tables' A bits
    walks = m.stats["walks"]
    assert all(t.ok for t in m.walk_many(SID, addrs, pasid=PASID))
    assert m.walk(SID, addrs[0], pasid=PASID).ok
    assert calls["batch"] == 2 and calls["single"] >= 1
    assert m.stats["walks"] == walks + 5
