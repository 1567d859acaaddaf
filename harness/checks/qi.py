"""QI completeness: did the guest invalidate every translation it changed?

The check replays QEMU's own trace of the unit: every IOTLB fill
(vtd_iotlb_page_update + the vtd_dmar_translate that follows it with the page
mask), every use (vtd_iotlb_page_hit) and every invalidation descriptor
(vtd_inv_desc, decoded by harness.viommu.descriptors) into the reference model's
caches, with the spec's rule for what each descriptor removes.  Then, with the
guest paused, every translation still cached is compared with a fresh walk of the
guest's tables in guest RAM: one that no longer matches memory is STALE — the
device could still use a translation the guest has changed without invalidating
it (with caching mode on, the missing or late invalidation this suite exists to
catch).

It also reports descriptors the unit must reject, invalidation waits that never
completed (a status write or completion interrupt that QEMU never did) and uses
of cache entries the replay had already invalidated (QEMU and the spec disagree).

Across time (svmval's QEMU, patches/0003-*): every first-stage entry each walk
read is in the trace, and every IOTLB hit says whether the entries its cached
translation came from still give it. So every use is judged, not only what is
still cached at a pause: a hit whose source changed (address, presence, page
size, or a right taken away) with no covering invalidation since the fill is
a STALE USE the guest caused (it changed its tables and did not invalidate
before the device used them); one after a covering invalidation is the unit
keeping what it was told to drop. And every fill is walked again by the model
over the very entries QEMU read (harness/checks/walks.py): the model
differential on every translation of the run. With a stock QEMU only the
pause-point comparison runs; the result says which.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from harness.checks.walks import change_kind, fill_mismatch
from harness.results import DATA_INV_TO_USE, DATA_INV_TO_USE_UNIT, CheckResult, Finding, Traffic, Verdict
from harness.trace.events import (
    DmarFault,
    DmarTranslate,
    FsWalkEntry,
    GenericEvent,
    InvDesc,
    InvDescWaitIrq,
    InvDescWaitSw,
    InvDescWaitWriteFail,
    IotlbHitSource,
    IotlbPageHit,
    IotlbPageUpdate,
    RegDmarRoot,
    RegWrite,
    TraceEvent,
)
from harness.viommu import GuestMemory, VtdModel
from harness.viommu import descriptors as dsc
from harness.viommu.caches import IotlbEntry, TranslationCaches
from harness.viommu.invalidation import apply_invalidation

IQA_OFFSET = 0x90
IQA_DW = 1 << 11
# First-stage leaf: address bits 51:12 (PS pages mask more below); the permission bits
# that change what a device may do: P, R/W, U/S, XD. A and D are set by the walk
# itself and differ harmlessly between QEMU's cached copy and memory.
_ADDR_MASK = ((1 << 52) - 1) & ~0xFFF
_PERM_MASK = 0x7 | (1 << 63)


@dataclass
class _Fill:
    line: int
    sid: int
    did: int
    iova: int
    pte: int
    size: int = 4096
    last_use: int = 0
    walk: tuple[FsWalkEntry, ...] = ()  # what QEMU's walk read for it (svmval's QEMU)
    replayed: bool = True  # False: a PASID-tagged device's fill, judged but not cached here
    sized: bool = False  # a vtd_dmar_translate gave its page size


@dataclass
class QiReplay:
    """State of the replay; `finish(memory)` turns it into a CheckResult."""

    pasid: int = 0  # requests without PASID use RID_PASID (Linux: 0)
    pgtt: int = 1  # first-stage: QEMU x-flts walks every scalable DMA through stage 1
    wide: bool = True
    psi: bool = True  # CAP.PSI of the unit (QEMU's intel-iommu sets it)
    # Requesters whose fills carry a PASID the trace does not show (QEMU's IOTLB events
    # have none): svmval-sva's ATS traffic. Their fills and hits are counted, not replayed
    # under RID_PASID, where invalidations for their own PASIDs would never reach them.
    pasid_sids: frozenset[int] = frozenset()
    root: int | None = None
    counts: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    inv_to_use: list[float] = field(default_factory=list)
    _model: VtdModel | None = None
    _entries: dict[tuple[int, int], _Fill] = field(default_factory=dict)  # (did, page) -> fill
    _pending: _Fill | None = None
    _waits: list[tuple[int, dsc.WaitDesc]] = field(default_factory=list)
    _dropped_at: dict[tuple[int, int], int] = field(default_factory=dict)  # page -> inv line
    _walk: list[FsWalkEntry] = field(default_factory=list)  # the walk in progress
    _last_hit: tuple[IotlbPageHit, bool] | None = None  # (hit, its entry still valid in the replay)
    # The walk that ended in each DMA fault (trace line of the fault -> entries read): the
    # tables as they were at the fault, for the faults check.
    fault_walks: dict[int, tuple[FsWalkEntry, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The replay's caches are a model's caches: the same rules as the judge's.
        self._model = VtdModel(GuestMemory(4096))

    @property
    def caches(self) -> TranslationCaches:
        assert self._model is not None
        return self._model.caches

    # -- events ----------------------------------------------------------------------
    @property
    def wants(self) -> frozenset[str]:
        """The events the replay reads (an EventSink for harness.trace.follow)."""
        return frozenset(QI_EVENTS)

    def feed(self, events: Iterable[TraceEvent]) -> None:
        for ev in events:
            self.counts["events"] += 1
            if isinstance(ev, FsWalkEntry):
                w = self._walk
                if w and (w[-1].iova != ev.iova or ev.level >= w[-1].level):
                    self._end_walk()
                w.append(ev)
                continue
            if isinstance(ev, IotlbHitSource):
                self._hit_source(ev)
                continue
            if isinstance(ev, DmarFault):
                if walk := self._take_walk(ev.addr):
                    self.fault_walks[ev.line] = walk
                continue
            if isinstance(ev, IotlbPageHit) and ev.sid in self.pasid_sids:
                self.counts["pasid_device_events"] += 1
                self.counts["pasid_hits"] += 1
                self._last_hit = None
                continue
            if isinstance(ev, IotlbPageUpdate):
                self._flush_pending()
                self._pending = _Fill(ev.line, ev.sid, ev.domain, ev.iova, ev.slpte, walk=self._take_walk(ev.iova),
                                      replayed=ev.sid not in self.pasid_sids)
            elif isinstance(ev, DmarTranslate):
                p = self._pending
                if p is not None and p.sid == ev.sid and (p.iova & ~ev.mask) == ev.iova & ~ev.mask:
                    p.size = ev.mask + 1
                    p.sized = True
                self._flush_pending()
                self.counts["translations"] += 1
            elif isinstance(ev, IotlbPageHit):
                self._flush_pending()
                self._hit(ev)
            elif isinstance(ev, InvDesc):
                self._flush_pending()
                self._descriptor(ev)
            elif isinstance(ev, InvDescWaitSw | InvDescWaitIrq):
                self._wait_done(ev)
            elif isinstance(ev, InvDescWaitWriteFail):
                self.findings.append(
                    Finding(f"invalidation wait status write failed (hi {ev.hi:#x} lo {ev.lo:#x})",
                            trace_lines=(ev.line,))
                )
            elif isinstance(ev, RegWrite) and ev.offset == IQA_OFFSET:
                self.wide = bool(ev.value & IQA_DW)
            elif isinstance(ev, RegDmarRoot):
                self.root = ev.addr
            elif isinstance(ev, GenericEvent) and ev.name == "vtd_iotlb_reset":
                # QEMU dropped its whole IOTLB on its own (size limit, reset): whatever
                # the guest did or did not invalidate, nothing cached survives -- except
                # the fill being traced: vtd_update_iotlb traces the update, then resets
                # when full, then inserts it (hw/i386/intel_iommu.c).
                pending, self._pending = self._pending, None
                self.caches.inv_iotlb_global()
                self._entries.clear()
                self._pending = pending
                self.counts["qemu_iotlb_resets"] += 1
        self._flush_pending()

    def _take_walk(self, iova: int) -> tuple[FsWalkEntry, ...]:
        """The walk in progress, if it was for `iova` (the fill or fault that ends it)."""
        if not self._walk or self._walk[-1].iova != iova:
            return ()
        walk = tuple(self._walk)
        self._walk.clear()
        return walk

    def _end_walk(self) -> None:
        """A walk that ended in neither a fill nor a DMA fault (e.g. a translation QEMU
        refused for the interrupt range, or a fault it did not record: FPD)."""
        self.counts["walks_without_fill"] += 1
        self._walk.clear()

    def _flush_pending(self) -> None:
        p = self._pending
        if p is None:
            return
        self._pending = None
        if p.walk:
            self.counts["fills_walked"] += 1
            why = fill_mismatch(p.walk, p.pte, p.size if p.sized else None)
            if why is not None:
                self.counts["model_mismatches"] += 1
                self.findings.append(Finding(
                    f"model differential: sid {p.sid:#x} iova {p.iova:#x}: {why}",
                    trace_lines=(p.walk[0].line, p.line)))
        if not p.replayed:
            self.counts["pasid_device_events"] += 1
            self.counts["pasid_fills"] += 1
            return
        page = p.iova & ~(p.size - 1)
        key = (p.did, page)
        old = self._entries.get(key)
        if old is not None and self.caches.iotlb_lookup(p.did, self.pasid, page) is not None:
            if (old.pte ^ p.pte) & (_ADDR_MASK | _PERM_MASK):
                self.findings.append(
                    Finding(
                        f"sid {p.sid:#x} iova {page:#x}: translation changed from pte {old.pte:#x} "
                        f"to {p.pte:#x} while the old one was still cached and no invalidation "
                        f"covered it (uses in between were stale)",
                        trace_lines=(old.line, p.line),
                    )
                )
                self.counts["stale_refills"] += 1
        dropped = self._dropped_at.pop(key, None)
        if dropped is not None:
            self.inv_to_use.append(float(p.line - dropped))
        self.caches.iotlb_insert(
            IotlbEntry(
                did=p.did, pasid=self.pasid, pgtt=self.pgtt, page_base=page, page_size=p.size,
                out_base=p.pte & _ADDR_MASK & ~(p.size - 1), decision=[], fpd=False,
                leaf_pte=p.pte, level=1, sids={p.sid},
            )
        )
        p.last_use = p.line
        self._entries[key] = p
        self.counts["fills"] += 1

    def _hit(self, ev: IotlbPageHit) -> None:
        self.counts["hits"] += 1
        entry = self.caches.iotlb_lookup(ev.domain, self.pasid, ev.iova)
        self._last_hit = (ev, entry is not None)
        if entry is None:
            # QEMU answered from a cache entry the spec says is gone.
            self.findings.append(
                Finding(
                    f"sid {ev.sid:#x} iova {ev.iova:#x}: QEMU used a cached translation "
                    f"(pte {ev.slpte:#x}) after an invalidation that covers it",
                    trace_lines=(ev.line,),
                )
            )
            self.counts["hits_after_invalidation"] += 1
            return
        fill = self._entries.get((ev.domain, entry.page_base))
        if fill is not None:
            fill.last_use = ev.line

    def _hit_source(self, ev: IotlbHitSource) -> None:
        """Judge one use: did the translation the hit served still come from the guest's
        tables? (QEMU traces this right after the hit it belongs to.)"""
        self.counts["hits_source_checked"] += 1
        hit, self._last_hit = self._last_hit, None
        if not ev.changed:
            return
        why = change_kind(ev.filled, ev.now)
        if why is None:
            self.counts["hits_after_grant"] += 1  # only more rights: a cached narrower one is harmless
            return
        where = (f"sid {ev.sid:#x} pasid {ev.pasid:#x} iova {ev.iova:#x}: its level-{ev.changed} entry at "
                 f"{ev.addr:#x} {why} since the fill")
        lines = (hit[0].line, ev.line) if hit is not None else (ev.line,)
        if hit is None:
            # A PASID-tagged device's hit: its fills are judged, not cached by this replay.
            self.counts["stale_uses"] += 1
            self.findings.append(Finding(
                f"STALE USE: {where}, and no invalidation reaching the unit dropped it before the "
                f"device used it", trace_lines=lines))
        elif hit[1]:
            self.counts["stale_uses"] += 1
            self.findings.append(Finding(
                f"STALE USE (the guest missed an invalidation): {where}, and no invalidation covering "
                f"it came between the change and this use", trace_lines=lines))
        else:
            # Already a finding of its own (the hit after a covering invalidation).
            self.counts["stale_uses_after_invalidation"] += 1

    def _descriptor(self, ev: InvDesc) -> None:
        self.counts["descriptors"] += 1
        # The unit completes a wait (status write / interrupt) before it fetches the
        # next descriptor: one still pending now was never completed.
        self._expire_waits()
        d = ev.decode(width=256 if self.wide else 128)
        if isinstance(d, dsc.InvalidDescriptor):
            self.findings.append(
                Finding(f"invalid descriptor ({ev.type}): {d}", trace_lines=(ev.line,))
            )
            self.counts["invalid_descriptors"] += 1
            return
        self.counts[f"desc_{type(d).__name__}"] += 1
        # Only these two remove IOTLB entries (apply_invalidation): the others need no
        # before/after comparison of what is cached (half of all descriptors are waits).
        if isinstance(d, dsc.IotlbInv | dsc.PasidIotlbInv):
            before = set(self._live_keys())
            apply_invalidation(self.caches, d, psi=self.psi)
            for key in before - set(self._live_keys()):
                self._entries.pop(key, None)
                self._dropped_at[key] = ev.line
                self.counts["entries_invalidated"] += 1
        else:
            apply_invalidation(self.caches, d, psi=self.psi)
        if isinstance(d, dsc.WaitDesc):
            if d.sw or d.if_:
                self._waits.append((ev.line, d))
            elif d.fn or d.pd:
                # A fence (and page-request drain) with no status: Linux's PRQ drain
                # submits one ahead of its own waited-for wait (intel_drain_pasid_prq).
                self.counts["fence_waits"] += 1
            else:
                self.findings.append(
                    Finding("invalidation wait with neither SW nor IF: nothing can observe it",
                            trace_lines=(ev.line,))
                )

    def _live_keys(self) -> Iterable[tuple[int, int]]:
        for key in self._entries:
            if self.caches.iotlb_lookup(key[0], self.pasid, key[1]) is not None:
                yield key

    def _wait_done(self, ev: InvDescWaitSw | InvDescWaitIrq) -> None:
        if not self._waits:
            return
        _line, d = self._waits[-1]
        if isinstance(ev, InvDescWaitSw):
            done = bool(d.sw) and d.status_addr == ev.addr and d.status_data == ev.data
        else:
            done = bool(d.if_)
        if done:
            self._waits.pop()
            self.counts["waits_completed"] += 1

    def _expire_waits(self) -> None:
        for line, d in self._waits:
            self.findings.append(
                Finding(
                    f"invalidation wait never completed (SW={d.sw} IF={d.if_} status addr "
                    f"{d.status_addr:#x} data {d.status_data:#x})",
                    trace_lines=(line,),
                )
            )
            self.counts["waits_pending"] += 1
        self._waits.clear()

    # -- verdict ---------------------------------------------------------------------
    def finish(self, memory: GuestMemory | None, *, started: float | None = None) -> CheckResult:
        """Judge what is still cached against guest RAM (the guest must be paused)."""
        t0 = started if started is not None else time.monotonic()
        self._expire_waits()
        if self._walk:
            self._end_walk()
        for key in ("waits_pending", "cached_judged", "stale_uses", "hits_source_checked", "fills_walked",
                    "model_mismatches"):
            self.counts[key] += 0  # present in the counts even when zero
        missing = []  # nothing judged is an ERROR naming what was missing, never a PASS
        if not self.counts["descriptors"]:
            missing.append("the trace has no invalidation descriptors (vtd_inv_desc): was QEMU traced "
                           "with the vtd_inv_* events, and did the guest enable queued invalidation?")
        if memory is not None and self.root is None:
            missing.append("the trace has no root-table pointer (vtd_reg_dmar_root), so what is cached "
                           "cannot be compared with the guest's tables in RAM: was tracing on from boot?")
        if memory is not None and self.root is not None:
            self._judge_cached(memory)
        stale = (self.counts["stale_cached"] + self.counts["stale_refills"] + self.counts["stale_uses"]
                 + self.counts["stale_uses_after_invalidation"])
        bad = len(self.findings)
        mode = self.mode()
        if missing:
            return CheckResult(
                name="qi-completeness", verdict=Verdict.ERROR, traffic=Traffic.REAL,
                summary="not judged: " + "; ".join(missing), counts=dict(self.counts),
                findings=tuple(self.findings[:200]), duration_s=time.monotonic() - t0,
                data={"mode": mode})
        summary = (
            f"{self.counts['descriptors']} descriptors, {self.counts['fills']} IOTLB fills, "
            f"{self.counts['hits']} hits replayed; {stale} stale translations, "
            f"{self.counts['invalid_descriptors']} invalid descriptors, "
            f"{self.counts['waits_pending']} waits never completed; {mode}"
        )
        if self.counts["pasid_device_events"]:
            summary += (f"; {self.counts['pasid_device_events']} PASID-tagged fills/hits of the svmval-sva "
                        "device judged by the prq check and its own data checks, not replayed here")
        return CheckResult(
            name="qi-completeness",
            verdict=Verdict.FAIL if bad else Verdict.PASS,
            traffic=Traffic.REAL,
            summary=summary,
            counts=dict(self.counts),
            findings=tuple(self.findings[:200]),
            duration_s=time.monotonic() - t0,
            data={DATA_INV_TO_USE: self.inv_to_use, DATA_INV_TO_USE_UNIT: "trace lines", "mode": mode},
        )

    def mode(self) -> str:
        """Which legs ran: across time (every use and fill judged) or pause points only."""
        c = self.counts
        uses = c["hits"] + c["pasid_hits"]
        if not c["hits_source_checked"] and not c["fills_walked"]:
            return ("judged at pause points only: this QEMU traces no walk sources "
                    "(vtd_fs_walk_entry / vtd_iotlb_hit_source: svmval's QEMU has them)")
        return (f"judged across time: {c['hits_source_checked']} of {uses} IOTLB hits checked against "
                f"their source entries, {c['fills_walked']} of {c['fills'] + c['pasid_fills']} fills walked "
                f"again by the model ({c['model_mismatches']} disagree)")

    def _judge_cached(self, memory: GuestMemory) -> None:
        model = VtdModel(memory)
        assert self.root is not None
        model.enable(self.root, scalable=True)
        for (did, page), fill in list(self._entries.items()):
            if self.caches.iotlb_lookup(did, self.pasid, page) is None:
                continue
            self.counts["cached_judged"] += 1
            fresh = model.walk(fill.sid, page, update_ad=False)
            cached_out = fill.pte & _ADDR_MASK & ~(fill.size - 1)
            if fresh.ok and fresh.address == cached_out and fresh.page_size == fill.size and (
                fresh.leaf_pte is None or not (fresh.leaf_pte ^ fill.pte) & _PERM_MASK
            ):
                continue
            now = (
                f"maps to {fresh.address:#x}" if fresh.ok and fresh.address is not None
                else f"faults with {fresh.fault!r}"
            )
            self.findings.append(
                Finding(
                    f"STALE: sid {fill.sid:#x} iova {page:#x} is cached as {cached_out:#x} "
                    f"(pte {fill.pte:#x}) but the guest's tables now say it {now}; "
                    f"no invalidation covering it was issued",
                    trace_lines=tuple(sorted({fill.line, fill.last_use})),
                )
            )
            self.counts["stale_cached"] += 1


# The events the replay reads; iter_events(path, names=QI_EVENTS) skips the rest
# (interrupt remapping, context-cache hits, register reads) without parsing them.
QI_EVENTS = (
    "vtd_iotlb_page_update", "vtd_dmar_translate", "vtd_iotlb_page_hit", "vtd_inv_desc",
    "vtd_inv_desc_wait_sw", "vtd_inv_desc_wait_irq", "vtd_inv_desc_wait_write_fail",
    "vtd_reg_write", "vtd_reg_dmar_root", "vtd_iotlb_reset",
    "vtd_fs_walk_entry", "vtd_iotlb_hit_source", "vtd_dmar_fault",
)


def check_qi(events: Iterable[TraceEvent], memory: GuestMemory | None) -> CheckResult:
    """Replay a whole trace and judge it against guest RAM (None: trace-only rules)."""
    t0 = time.monotonic()
    replay = QiReplay()
    replay.feed(events)
    return replay.finish(memory, started=t0)
