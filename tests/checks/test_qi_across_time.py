"""The QI check across time, on real excerpts of svmval's QEMU traces (patches/0003):
edu_dma's pages filled, held, read again (tests/fixtures/traces/README.md). In the
seeded run the 8 pages read again lost write permission in guest RAM with no
invalidation while the guest was paused (`--seed-bug stale-use`)."""

from __future__ import annotations

from pathlib import Path

from harness.checks.faults import ExpectedFault, check_faults
from harness.checks.qi import QI_EVENTS, QiReplay, check_qi
from harness.checks.walks import change_kind, fill_mismatch, model_walk
from harness.results import Verdict
from harness.trace.events import DmarFault, FsWalkEntry, IotlbPageUpdate, TraceEvent
from harness.trace.parser import iter_events
from harness.viommu import FaultReason, GuestMemory

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "traces"
FORMATS = TRACES / "qemu10.2.2-svmval0003-vtd-trace-events"
SEEDED = TRACES / "svmval-seeded-stale-use-edu-reuse.trace.xz"
PLAIN = TRACES / "svmval-plain-edu-reuse.trace.xz"
FAULT = TRACES / "svmval-plain-edu-fault.trace"


EDU = 0x30  # edu's source-id: all its fills in these excerpts are inside them


def events(path: Path) -> list[TraceEvent]:
    """The excerpt's descriptors and edu's walks, fills and hits (other devices' entries
    were filled before the excerpt begins: the replay would take them as invalidated)."""
    evs = iter_events(path, names=QI_EVENTS, strict=True, trace_events=FORMATS)
    return [e for e in evs if getattr(e, "sid", EDU) == EDU]


def test_a_plain_run_judges_every_hit_and_every_fill_and_passes() -> None:
    r = check_qi(events(PLAIN), None)
    assert r.verdict is Verdict.PASS, [f.message for f in r.findings[:3]]
    c = r.counts
    assert c["hits"] > 0 and c["hits_source_checked"] == c["hits"]
    assert c["fills"] > 0 and c["fills_walked"] == c["fills"] and c["model_mismatches"] == 0
    assert c["stale_uses"] == 0
    assert "judged across time" in r.summary


def test_each_seeded_stale_use_is_found_with_its_hit_and_source_lines() -> None:
    r = check_qi(events(SEEDED), None)
    assert r.verdict is Verdict.FAIL
    stale = [f for f in r.findings if f.message.startswith("STALE USE (the guest missed an invalidation)")]
    assert len(stale) == r.counts["stale_uses"] == 8
    text = list(iter_events(SEEDED, trace_events=FORMATS))
    by_line = {ev.line: ev for ev in text}
    for f in stale:
        hit, source = (by_line[n] for n in f.trace_lines)
        assert hit.name == "vtd_iotlb_page_hit" and source.name == "vtd_iotlb_hit_source"
        assert "lost write permission" in f.message


def test_the_same_stale_uses_after_a_covering_invalidation_are_the_units_fault_not_the_guests() -> None:
    evs = events(SEEDED)
    # Drop what the replay had cached by replaying a global IOTLB invalidation first:
    # the hits are then uses of entries the unit was told to drop.
    replay = QiReplay()
    fills = [e for e in evs if isinstance(e, IotlbPageUpdate)]
    last_fill = max(e.line for e in fills)
    replay.feed([e for e in evs if e.line <= last_fill])
    replay.caches.inv_iotlb_global()
    replay.feed([e for e in evs if e.line > last_fill])
    r = replay.finish(None)
    assert r.counts["stale_uses"] == 0 and r.counts["hits_after_invalidation"] > 0
    assert r.counts["stale_uses_after_invalidation"] == 8


def test_pause_points_only_is_said_when_the_trace_has_no_walk_sources() -> None:
    evs = [e for e in events(PLAIN) if e.name not in ("vtd_fs_walk_entry", "vtd_iotlb_hit_source")]
    r = check_qi(evs, None)
    assert "judged at pause points only" in r.summary and r.counts["hits_source_checked"] == 0


def test_the_model_walks_each_fill_over_the_entries_qemu_read() -> None:
    evs = events(PLAIN)
    walk = [e for e in evs if isinstance(e, FsWalkEntry)][:4]
    fill = next(e for e in evs if isinstance(e, IotlbPageUpdate) and e.line > walk[-1].line)
    assert fill_mismatch(walk, fill.slpte, 4096) is None
    # A QEMU that cached another leaf than its walk read is a mismatch.
    assert "the model's leaf" in (fill_mismatch(walk, fill.slpte ^ 0x1000, 4096) or "")
    assert "page" in (fill_mismatch(walk, fill.slpte, 2 << 20) or "")


def test_what_a_change_to_a_cached_entry_means() -> None:
    assert change_kind(0x59A2067, 0x59A2065) == "lost write permission"  # the seeded change
    assert change_kind(0x59A2065, 0x59A2067) is None  # a right granted: no need to invalidate
    assert change_kind(0x59A2067, 0x59A2066) == "no longer present"
    assert "now points to" in (change_kind(0x59A2067, 0x79A2067) or "")


def test_a_provoked_fault_is_judged_on_the_walk_qemu_made_at_the_fault() -> None:
    evs = list(iter_events(FAULT, strict=True, trace_events=FORMATS))
    replay = QiReplay()
    replay.feed(evs)
    fault = evs[-1]
    assert isinstance(fault, DmarFault)
    assert model_walk(replay.fault_walks[fault.line]).fault is FaultReason.FS_ENTRY_NOT_PRESENT
    expected = [ExpectedFault("edu_dma_fault", 0x30, fault.addr, False)]
    console = (f"DMAR: [DMA Read NO_PASID] Request device [00:06.0] fault addr {fault.addr:#x} "
               "[fault reason 0x71] First-stage entry P clear")
    r = check_faults(evs, expected, None, None, console, walks=replay.fault_walks)
    assert r.verdict is Verdict.PASS, [f.message for f in r.findings]
    assert r.counts["reason_from_walk_at_fault"] == 1
    # The device made a write, the unit recorded a read: direction is compared.
    r = check_faults(evs, [ExpectedFault("edu_dma_fault", 0x30, fault.addr, True)],
                     None, None, console, walks=replay.fault_walks)
    assert r.verdict is Verdict.FAIL and "recorded a DMA read, the device made a write" in r.findings[0].message


def test_without_a_walk_a_fault_on_a_page_remapped_afterwards_is_not_judged_on_the_final_tables() -> None:
    """A stock QEMU traces no walk: the tables at the end of the run are the only ones
    left, and for a page the workload unmapped after its fault they say something else."""
    evs = [e for e in iter_events(FAULT, strict=True, trace_events=FORMATS) if e.name == "vtd_dmar_fault"]
    fault = evs[-1]
    console = (f"DMAR: [DMA Read NO_PASID] Request device [00:06.0] fault addr {fault.addr:#x} "  # type: ignore[attr-defined]
               "[fault reason 0x71] First-stage entry P clear")
    expected = [ExpectedFault("edu_dma_fault", 0x30, fault.addr, False, remapped_after=True)]  # type: ignore[attr-defined]
    r = check_faults(evs, expected, GuestMemory(4096), 0, console)
    assert r.verdict is Verdict.PASS and r.counts["reason_not_judged"] == 1
    assert "1 reasons not judged" in r.summary
