"""The VT-d remapping unit: registers + caches + translation pipeline.

``VtdModel(memory, **config)`` models one DMA-remapping unit spec-exactly
(QEMU's departures, docs/VTD_FACTS.md §10, are deliberately absent: the differential
harness keeps them in its own table). Legacy or scalable mode is chosen by
RTADDR.TTM as latched by GCMD.SRTP, as hardware does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from .batch import nested_walk_batch
from .caches import (
    MISS,
    ContextCacheEntry,
    Decision,
    DevtlbEntry,
    IotlbEntry,
    PasidCacheEntry,
    PscEntry,
    TranslationCaches,
)
from .capability import Cap, Ecap, VtdConfig
from .faults import Fault, FaultReason, RequestType, WalkFault
from .first_stage import ADDR_MASK_4K, FsParams, fs_access_fault, fs_walk
from .invalidation import InvalidationQueue
from .memory import GuestMemory
from .nested import nested_walk
from .pasid import Pgtt, pasid_entry_lookup
from .prq import PageRequestQueue, PageRequestResult
from .registers import (
    CCMD_CIRG_SHIFT,
    IOTLB_IIRG_SHIFT,
    RTADDR_TTM_SHIFT,
    FaultOutcome,
    Gsts,
    Reg,
    RegisterFile,
)
from .root_context import (
    LegacyContextEntry,
    ScalableContextEntry,
    TranslationTableMode,
    TranslationType,
    legacy_context_lookup,
    scalable_context_lookup,
)
from .second_stage import SsParams, ss_walk

FR = FaultReason
TTM = TranslationTableMode

_QIES = int(Gsts.QIES)
INTERRUPT_BASE = 0xFEE0_0000
INTERRUPT_END = 0xFEF0_0000  # exclusive

# Access errors are not entries: nothing about them is cached, even with CM=1.
_ACCESS_ERRORS = frozenset(
    {
        FR.ROOT_ACCESS, FR.CONTEXT_ACCESS, FR.SM_ROOT_ACCESS, FR.SM_CONTEXT_ACCESS,
        FR.SM_PASID_DIR_ACCESS, FR.SM_PASID_ENTRY_ACCESS, FR.SS_ENTRY_ACCESS,
        FR.SS_SM_ENTRY_ACCESS, FR.SS_SM_INVALID_SLPTPTR, FR.ADDRESS_BEYOND_MGAW,
        FR.SM_BEYOND_HW_MAX, FR.SM_PASID_TOO_LARGE,
    }
)


class Translation(NamedTuple):
    """Result of one translation. ``ok`` with ``address``, or ``fault``.

    ``source``: "walk" (tables read), "iotlb" (cache hit), "disabled" (TE=0,
    untranslated), "interrupt" (a write to 0xFEEx_xxxx without PASID: an
    interrupt request, not DMA), "abort" (TTM=11 abort-DMA mode).
    ``record`` says what fault logging did with a fault.
    """

    ok: bool
    address: int | None
    page_size: int
    fault: FaultReason | None
    did: int | None = None
    pgtt: Pgtt | None = None
    leaf_pte: int | None = None
    level: int | None = None
    pasid: int | None = None
    source: str = "walk"
    record: FaultOutcome | None = None
    fpd: bool = False

    def answer(self) -> tuple[bool, int | None, int, FaultReason | None]:
        """What the requester observes (for staleness comparisons)."""
        return (self.ok, self.address, self.page_size if self.ok else 0, self.fault)


_tuple_new = tuple.__new__


class StaleReport(NamedTuple):
    stale: bool
    cached: Translation
    fresh: Translation


def _fault(reason: FaultReason, fpd: bool = False, did: int | None = None,
           pgtt: Pgtt | None = None, pasid: int | None = None, level: int | None = None,
           source: str = "walk") -> Translation:
    return Translation(False, None, 0, reason, did, pgtt, None, level, pasid, source, None, fpd)


class VtdModel:
    """One VT-d remapping unit over ``memory``. See the module docstring."""

    def __init__(self, memory: GuestMemory, config: VtdConfig | None = None,
                 **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise TypeError("pass either config= or keyword options, not both")
        self.config = config or VtdConfig.from_kwargs(**kwargs)
        self.memory = memory
        self.cap: Cap = self.config.cap()
        self.ecap: Ecap = self.config.ecap()
        self.haw = self.config.host_address_width
        self.mgaw = self.cap.mgaw + 1
        self.cm = bool(self.cap.cm)
        self.caches = TranslationCaches(self.config.iotlb_capacity)
        self.caches.on_change = self._invalidate_memo
        self.regs = RegisterFile(self.cap, self.ecap, self)
        self._memo: dict[tuple[int, int | None, int], IotlbEntry] = {}
        self.te = False
        self.rta = 0
        self.ttm = TTM.LEGACY
        self.irta = 0
        self.stats = {"translations": 0, "memo_hits": 0, "iotlb_hits": 0, "walks": 0,
                      "faults": 0}
        # Part 2 engines (invalidation queue, page request queue) attach here.
        self.iq = InvalidationQueue(self)
        self.prq = PageRequestQueue(self)

    # ================================================================== registers
    def read_reg(self, offset: int, size: int = 4) -> int:
        return self.regs.read(offset, size)

    def write_reg(self, offset: int, value: int, size: int = 4) -> None:
        self.regs.write(offset, value, size)

    # -- hooks called by the register file -------------------------------------------
    def hook_srtp(self) -> None:
        raw = self.regs.get(Reg.RTADDR)
        self.rta = raw & ~0xFFF & ((1 << 64) - 1)
        self.ttm = TTM((raw >> RTADDR_TTM_SHIFT) & 3)
        self._memo.clear()
        if self.cap.esrtps:
            self.caches.clear()

    def hook_te(self, enable: bool) -> None:
        self.te = enable
        self._memo.clear()

    def hook_qie(self, enable: bool) -> bool:
        return self.iq.set_enabled(enable)

    def hook_sirtp(self) -> None:
        self.irta = self.regs.get(Reg.IRTA)

    def hook_wbf(self) -> None:
        """Write-buffer flush: the model has no write buffer, nothing to drain."""

    def hook_iqt(self) -> None:
        if self.regs.get(Reg.GSTS) & _QIES:
            self.iq.process()

    def hook_ccmd(self, value: int) -> int:
        """Register-based context-cache invalidation; returns CAIG (0 = not done)."""
        if self.regs.gsts & Gsts.QIES:
            return 0  # register-based invalidation is not available while QI is enabled
        cirg = (value >> CCMD_CIRG_SHIFT) & 3
        if cirg == 1:
            self.caches.inv_context_global()
        elif cirg == 2:
            self.caches.inv_context_domain(value & 0xFFFF)
        elif cirg == 3:
            self.caches.inv_context_device((value >> 16) & 0xFFFF, (value >> 32) & 3)
        return cirg

    def hook_iotlb(self, value: int, iva: int) -> int:
        """Register-based IOTLB invalidation; returns IAIG (0 = not done)."""
        if self.regs.gsts & Gsts.QIES:
            return 0
        iirg = (value >> IOTLB_IIRG_SHIFT) & 3
        did = (value >> 32) & 0xFFFF
        if iirg == 1:
            self.caches.inv_iotlb_global()
        elif iirg == 2:
            self.caches.inv_iotlb_domain(did)
        elif iirg == 3:
            am = iva & 0x3F
            if not self.cap.psi:
                self.caches.inv_iotlb_domain(did)  # PSI unsupported: done as domain-selective
                return 2
            if am > self.cap.mamv:
                return 0
            self.caches.inv_iotlb_page(did, iva & ~0xFFF, am, bool(iva & 0x40))
        return iirg

    def _invalidate_memo(self) -> None:
        self._memo.clear()

    # ================================================================== translation
    def translate(self, sid: int, addr: int, *, pasid: int | None = None, write: bool = False,
                  execute: bool = False, privileged: bool = False) -> Translation:
        """Translate one untranslated DMA request (records the fault if it faults)."""
        if pasid is None:
            # Requests without a PASID TLP prefix carry no execute/privilege attributes.
            execute = privileged = False
        e = self._memo.get((sid, pasid, addr >> 12))
        if e is not None:
            d = e.decision[int(write) | int(execute) << 1 | int(privileged) << 2]
            if d is None:
                self.stats["memo_hits"] += 1
                return _tuple_new(Translation, (
                    True, e.out_base | (addr & (e.page_size - 1)), e.page_size, None, e.did,
                    e.pgtt, e.leaf_pte, e.level, e.pasid, "iotlb", None, e.fpd))
        t = self._resolve(sid, addr, pasid, write=write, execute=execute, priv=privileged,
                          use_caches=True, fill=True, update_ad=True)
        if t.fault is not None:
            t = self._report(t, sid, addr, pasid, write=write, execute=execute, priv=privileged)
        return t

    def translate_many(self, sid: int, addrs: Iterable[int], *, pasid: int | None = None,
                       write: bool = False, execute: bool = False,
                       privileged: bool = False) -> list[int | None]:
        """Batch API: translated address per input, None where the request faulted
        (faults are recorded as by :meth:`translate`)."""
        if pasid is None:
            execute = privileged = False
        idx = int(write) | int(execute) << 1 | int(privileged) << 2
        memo_get = self._memo.get
        out: list[int | None] = []
        append = out.append
        for addr in addrs:
            e = memo_get((sid, pasid, addr >> 12))
            if e is not None and e.decision[idx] is None:
                append(e.out_base | (addr & (e.page_size - 1)))
                continue
            t = self.translate(sid, addr, pasid=pasid, write=write, execute=execute,
                               privileged=privileged)
            append(t.address)
        return out

    def walk(self, sid: int, addr: int, *, pasid: int | None = None, write: bool = False,
             execute: bool = False, privileged: bool = False, update_ad: bool = True
             ) -> Translation:
        """A full table walk ignoring and not filling caches (no fault recording)."""
        if pasid is None:
            execute = privileged = False
        return self._resolve(sid, addr, pasid, write=write, execute=execute, priv=privileged,
                             use_caches=False, fill=False, update_ad=update_ad)

    def walk_many(self, sid: int, addrs: Sequence[int], *, pasid: int | None = None,
                  write: bool = False, update_ad: bool = True) -> list[Translation]:
        """Batch of full paging-structure walks (IOTLB bypassed, nothing cached, no fault
        recording). Root/context/PASID entries are read once for the batch, as a unit
        whose context and PASID caches hit would."""
        if not self.te or self.ttm != TTM.SCALABLE:
            return [self._resolve(sid, a, pasid, write=write, execute=False, priv=False,
                                  use_caches=False, fill=False, update_ad=update_ad)
                    for a in addrs]
        pre = self._scalable_prefix(sid, pasid, priv=False, use_caches=False, fill=False)
        if isinstance(pre, Translation):
            return [pre] * len(addrs)
        eff, priv, pce = pre

        def walk_one(a: int) -> Translation:
            if pasid is None and INTERRUPT_BASE <= a < INTERRUPT_END:
                return self._resolve(sid, a, pasid, write=write, execute=False, priv=False,
                                     use_caches=False, fill=False, update_ad=update_ad)
            return self._scalable_tail(sid, a, pasid, eff, pce, write=write, execute=False,
                                       priv=priv, use_caches=False, fill=False,
                                       update_ad=update_ad)

        batch = self._nested_batch(addrs, pasid, eff, pce, walk_one, write=write, priv=priv,
                                   update_ad=update_ad)
        if batch is not None:
            return batch
        return [walk_one(a) for a in addrs]

    def _nested_batch(self, addrs: Sequence[int], pasid: int | None, eff: int,
                      pce: PasidCacheEntry, walk_one: Callable[[int], Translation], *,
                      write: bool, priv: bool, update_ad: bool) -> list[Translation] | None:
        """walk_many for a nested PASID entry: the whole batch walked together
        (:mod:`.batch`), lanes it flags walked one by one by ``walk_one``; None when the
        batch walker does not apply."""
        assert pce.lookup is not None
        pe = pce.lookup.entry
        if pe.pgtt != Pgtt.NESTED or (priv and not pe.sre):
            return None
        walked = nested_walk_batch(self.memory, pce.fs_params, pce.ss_params, addrs, write=write,
                                   priv=priv, update_ad=update_ad)
        if walked is None:
            return None
        did, fpd, pgtt = pe.did, pce.fpd, Pgtt.NESTED
        out: list[Translation] = []
        append = out.append
        trusted = True
        plain = 0
        for a, address, leaf_pte, flagged in zip(addrs, walked.address, walked.leaf_pte,
                                                 walked.flagged, strict=True):
            if (trusted and not flagged and not INTERRUPT_BASE <= address < INTERRUPT_END
                    and not (pasid is None and INTERRUPT_BASE <= a < INTERRUPT_END)):
                # What _scalable_tail builds for a nested walk of a 4 KiB page at FS level 1.
                append(_tuple_new(Translation, (True, address, 4096, None, did, pgtt, leaf_pte,
                                                1, eff, "walk", None, fpd)))
                plain += 1
                continue
            append(walk_one(a))
            # That walk may have set A/D bits the batch read before they were set.
            trusted = trusted and not update_ad
        self.stats["walks"] += plain
        return out

    # ------------------------------------------------------------------ staleness
    def stale_check(self, sid: int, addr: int, pasid: int | None = None, *, write: bool = False,
                    execute: bool = False, privileged: bool = False) -> StaleReport:
        """Compare what the caches would answer now with what memory says now.

        Neither side fills caches, sets A/D bits or records faults.
        """
        if pasid is None:
            execute = privileged = False
        cached = self._resolve(sid, addr, pasid, write=write, execute=execute, priv=privileged,
                               use_caches=True, fill=False, update_ad=False)
        fresh = self._resolve(sid, addr, pasid, write=write, execute=execute, priv=privileged,
                              use_caches=False, fill=False, update_ad=False)
        return StaleReport(cached.answer() != fresh.answer(), cached, fresh)

    def is_stale(self, sid: int, addr: int, pasid: int | None = None, *, write: bool = False,
                 execute: bool = False, privileged: bool = False) -> bool:
        """True if this request would be answered from a cache entry that no longer
        matches memory (the answer differs from a fresh walk)."""
        return self.stale_check(sid, addr, pasid, write=write, execute=execute,
                                privileged=privileged).stale

    def cache_state(self) -> dict[str, Any]:
        return self.caches.state()

    # ------------------------------------------------------------------ fault reporting
    def _report(self, t: Translation, sid: int, addr: int, pasid: int | None, *, write: bool,
                execute: bool, priv: bool) -> Translation:
        self.stats["faults"] += 1
        assert t.fault is not None
        if t.fault.qualified and t.fpd:
            return t._replace(record=FaultOutcome.SUPPRESSED)
        fault = Fault(sid=sid, addr=addr, fr=t.fault, pasid=pasid,
                      request_type=RequestType.WRITE if write else RequestType.READ,
                      priv=priv, exe=execute)
        return t._replace(record=self.regs.record_fault(fault))

    def record_fault(self, fault: Fault, fpd: bool = False) -> FaultOutcome:
        """Log a fault the caller detected (e.g. a page request to a PRE=0 context)."""
        if fault.fr.qualified and fpd:
            return FaultOutcome.SUPPRESSED
        return self.regs.record_fault(fault)

    # ------------------------------------------------------------------ pipeline
    def _resolve(self, sid: int, addr: int, pasid: int | None, *, write: bool, execute: bool,
                 priv: bool, use_caches: bool, fill: bool, update_ad: bool) -> Translation:
        self.stats["translations"] += 1
        if not self.te:
            return Translation(True, addr, 4096, None, source="disabled")
        if pasid is None and INTERRUPT_BASE <= addr < INTERRUPT_END:
            if write:
                return Translation(False, None, 0, None, source="interrupt")
            return _fault(FR.INTERRUPT_RANGE if self.ttm == TTM.LEGACY else FR.SM_INTERRUPT_RANGE)
        ttm = self.ttm
        if ttm == TTM.LEGACY:
            if pasid is not None:
                return _fault(FR.SM_TTM_LEGACY_PASID)
            return self._resolve_legacy(sid, addr, write=write, use_caches=use_caches, fill=fill,
                                        update_ad=update_ad)
        if ttm == TTM.SCALABLE:
            return self._resolve_scalable(sid, addr, pasid, write=write, execute=execute, priv=priv,
                                          use_caches=use_caches, fill=fill, update_ad=update_ad)
        if ttm == TTM.ABORT_DMA and self.ecap.adms:
            return Translation(False, None, 0, None, source="abort")
        return _fault(FR.SM_RTA_INVALID)

    # -- context ------------------------------------------------------------------------
    def context_entry(self, sid: int) -> ContextCacheEntry:
        """The context entry for ``sid`` in the latched mode, through the context cache."""
        return self._context(sid, scalable=self.ttm == TTM.SCALABLE, use_caches=True, fill=True)

    def _context(self, sid: int, *, scalable: bool, use_caches: bool, fill: bool
                 ) -> ContextCacheEntry:
        if use_caches:
            ce = self.caches.context.get(sid)
            if ce is not None and ce.scalable == scalable:
                return ce
        entry: LegacyContextEntry | ScalableContextEntry | None
        fault = None
        fpd = False
        ss_params = None
        did: int | None = None
        try:
            if scalable:
                entry = scalable_context_lookup(self.memory, self.rta, sid, self.ecap, self.haw)
            else:
                entry = legacy_context_lookup(self.memory, self.rta, sid, self.cap, self.ecap,
                                              self.haw)
                did = entry.did
                ss_params = SsParams.make(
                    entry.slptptr, entry.aw, mgaw=self.mgaw, haw=self.haw,
                    ps_2m=self.cap.ss_2m, ps_1g=self.cap.ss_1g, scalable=False,
                    snp_ok=bool(self.ecap.sc))
            fpd = bool(entry.fpd)
        except WalkFault as f:
            entry, fault, fpd = None, f.reason, f.fpd
            did = 0  # caching mode tags not-present context entries with DID 0
        ce = ContextCacheEntry(sid, did, entry, fault, fpd, scalable, ss_params)
        if fill and (fault is None or (self.cm and fault not in _ACCESS_ERRORS)):
            self.caches.context[sid] = ce
        return ce

    def _pasid_entry(self, sid: int, ctx: ScalableContextEntry, pasid: int, *, use_caches: bool,
                     fill: bool) -> PasidCacheEntry:
        if use_caches:
            pe = self.caches.pasid.get((sid, pasid))
            if pe is not None:
                return pe
        try:
            lk = pasid_entry_lookup(self.memory, ctx, pasid, self.cap, self.ecap, self.haw)
        except WalkFault as f:
            ce = PasidCacheEntry(sid, pasid, None, None, f.reason, f.fpd)
            if fill and self.cm and f.reason not in _ACCESS_ERRORS:
                self.caches.pasid[(sid, pasid)] = ce
            return ce
        e = lk.entry
        fsp = ssp = None
        if e.pgtt in (Pgtt.FIRST_STAGE, Pgtt.NESTED):
            fsp = FsParams.make(e.flptptr, flpm=e.flpm, haw=self.haw,
                                fs1gp=bool(self.cap.fl1gp), wpe=bool(e.wpe), nxe=bool(e.nxe),
                                smep=bool(e.smep), eafe=bool(e.eafe))
        if e.pgtt in (Pgtt.SECOND_STAGE, Pgtt.NESTED):
            ssp = SsParams.make(e.slptptr, e.aw, mgaw=self.mgaw, haw=self.haw,
                                ps_2m=self.cap.ss_2m, ps_1g=self.cap.ss_1g, scalable=True,
                                slee=bool(e.slee), ssade=bool(e.slade))
        ce = PasidCacheEntry(sid, pasid, e.did, lk, None, lk.fpd, fsp, ssp)
        if fill:
            self.caches.pasid[(sid, pasid)] = ce
        return ce

    # -- legacy --------------------------------------------------------------------------
    def _resolve_legacy(self, sid: int, addr: int, *, write: bool, use_caches: bool, fill: bool,
                        update_ad: bool) -> Translation:
        cce = self._context(sid, scalable=False, use_caches=use_caches, fill=fill)
        if cce.fault is not None:
            return _fault(cce.fault, cce.fpd, source="context")
        ctx = cce.entry
        assert isinstance(ctx, LegacyContextEntry)
        did, fpd = ctx.did, cce.fpd
        if ctx.tt == TranslationType.PASS_THROUGH:
            if addr >> self.haw:
                return _fault(FR.ADDRESS_BEYOND_MGAW, fpd, did, Pgtt.PASS_THROUGH)
            return Translation(True, addr, 4096, None, did, Pgtt.PASS_THROUGH, None, None, None,
                               "walk", None, fpd)
        idx = int(write)
        if use_caches:
            e = self.caches.iotlb_lookup(did, None, addr)
            if e is not None and e.pgtt == Pgtt.SECOND_STAGE:
                d = e.decision[idx]
                if d is not MISS:
                    return self._from_entry(e, addr, d, sid, None, idx, fill)
        ssp = cce.ss_params
        self.stats["walks"] += 1
        try:
            r = ss_walk(self.memory, ssp, addr, write=write, execute=False, update_ad=update_ad)
        except WalkFault as f:
            if fill:
                self._fill_negative(f, did, None, Pgtt.SECOND_STAGE, addr, idx, fpd)
            return _fault(f.reason, fpd, did, Pgtt.SECOND_STAGE, level=f.level)
        if INTERRUPT_BASE <= r.address < INTERRUPT_END:
            return _fault(FR.INTERRUPT_RANGE, fpd, did, Pgtt.SECOND_STAGE, level=r.level)
        t = Translation(True, r.address, r.page_size, None, did, Pgtt.SECOND_STAGE, r.leaf_pte,
                        r.level, None, "walk", None, fpd)
        if fill:
            dec = self._ss_decisions(ssp, r=r.r, w=r.w, x=r.x, dirty=r.dirty, first=None)
            self._fill(sid, None, addr, t, dec, did, None)
        return t

    # -- scalable ------------------------------------------------------------------------
    def _resolve_scalable(self, sid: int, addr: int, pasid: int | None, *, write: bool,
                          execute: bool, priv: bool, use_caches: bool, fill: bool,
                          update_ad: bool) -> Translation:
        pre = self._scalable_prefix(sid, pasid, priv=priv, use_caches=use_caches, fill=fill)
        if isinstance(pre, Translation):
            return pre
        eff, priv, pce = pre
        return self._scalable_tail(sid, addr, pasid, eff, pce, write=write, execute=execute, priv=priv,
                                   use_caches=use_caches, fill=fill, update_ad=update_ad)

    def _scalable_prefix(self, sid: int, pasid: int | None, *, priv: bool, use_caches: bool,
                         fill: bool) -> Translation | tuple[int, bool, PasidCacheEntry]:
        """Context + PASID lookup: (effective PASID, privilege, PASID entry) or a fault."""
        cce = self._context(sid, scalable=True, use_caches=use_caches, fill=fill)
        if cce.fault is not None:
            return _fault(cce.fault, cce.fpd, pasid=pasid, source="context")
        ctx = cce.entry
        assert isinstance(ctx, ScalableContextEntry)
        if pasid is None:
            eff = ctx.rid_pasid if self.ecap.rps else 0
            if self.ecap.rprivs:
                priv = bool(ctx.rid_priv)
        else:
            if not ctx.paside:
                return _fault(FR.SM_PASIDE_CLEAR, cce.fpd, pasid=pasid)
            eff = pasid
        pce = self._pasid_entry(sid, ctx, eff, use_caches=use_caches, fill=fill)
        if pce.fault is not None:
            return _fault(pce.fault, pce.fpd, pasid=eff, source="pasid")
        return eff, priv, pce

    def _scalable_tail(self, sid: int, addr: int, pasid: int | None, eff: int,
                       pce: PasidCacheEntry, *, write: bool, execute: bool, priv: bool,
                       use_caches: bool, fill: bool, update_ad: bool) -> Translation:
        assert pce.lookup is not None
        pe = pce.lookup.entry
        did, fpd, pgtt = pe.did, pce.fpd, Pgtt(pe.pgtt)
        if priv and not pe.sre:
            return _fault(FR.SM_SRE_CLEAR, fpd, did, pgtt, eff)
        if execute and not pe.ere:
            return _fault(FR.SM_ERE_CLEAR, fpd, did, pgtt, eff)
        idx = int(write) | int(execute) << 1 | int(priv) << 2
        if pgtt == Pgtt.PASS_THROUGH:
            if addr >> self.haw:
                return _fault(FR.SM_BEYOND_HW_MAX, fpd, did, pgtt, eff)
            if INTERRUPT_BASE <= addr < INTERRUPT_END:
                return _fault(FR.SM_INTERRUPT_RANGE, fpd, did, pgtt, eff)
            return Translation(True, addr, 4096, None, did, pgtt, None, None, eff, "walk", None,
                               fpd)
        if use_caches:
            e = self.caches.iotlb_lookup(did, eff, addr)
            if e is not None and e.pgtt == pgtt:
                d = e.decision[idx]
                if d is not MISS:
                    return self._from_entry(e, addr, d, sid, pasid, idx, fill)
        self.stats["walks"] += 1
        mem = self.memory
        try:
            if pgtt == Pgtt.FIRST_STAGE:
                start = None
                if use_caches and self.caches.psc:
                    pe_ = self.caches.psc_lookup(did, eff, addr, pce.fs_params.levels)
                    if pe_ is not None:
                        start = (pe_.level - 1, pe_.next_table, pe_.rights, pe_.xd)
                collect: list[tuple[int, int, int, int, int]] | None = [] if fill else None
                r: Any = fs_walk(mem, pce.fs_params, addr, write=write, execute=execute, priv=priv,
                                 update_ad=update_ad, start=start, collect=collect)
                if collect:
                    self._fill_psc(did, eff, addr, collect)
            elif pgtt == Pgtt.SECOND_STAGE:
                r = ss_walk(mem, pce.ss_params, addr, write=write, execute=execute, update_ad=update_ad)
            else:
                r = nested_walk(mem, pce.fs_params, pce.ss_params, addr, write=write, execute=execute,
                                priv=priv, update_ad=update_ad)
        except WalkFault as f:
            if fill and f.stage == "ss":
                self._fill_negative(f, did, eff, pgtt, addr, idx, fpd)
            return _fault(f.reason, fpd, did, pgtt, eff, f.level)
        address = r.address
        if INTERRUPT_BASE <= address < INTERRUPT_END:
            return _fault(FR.SM_INTERRUPT_RANGE, fpd, did, pgtt, eff, r.level)
        t = Translation(True, address, r.page_size, None, did, pgtt, r.leaf_pte, r.level, eff,
                        "walk", None, fpd)
        if fill:
            # Decisions for every request class are only needed to cache the result.
            if pgtt == Pgtt.FIRST_STAGE:
                dec = self._fs_decisions(pce.fs_params, rw=r.rw, us=r.us, xd=r.xd, dirty=r.dirty)
            elif pgtt == Pgtt.SECOND_STAGE:
                dec = self._ss_decisions(pce.ss_params, r=r.r, w=r.w, x=r.x, dirty=r.dirty,
                                         first=None)
            else:
                fsd = self._fs_decisions(pce.fs_params, rw=r.fs.rw, us=r.fs.us, xd=r.fs.xd,
                                         dirty=r.dirty)
                dec = self._ss_decisions(pce.ss_params, r=r.ss.r, w=r.ss.w, x=r.ss.x,
                                         dirty=r.dirty, first=fsd)
            # SRE/ERE were checked above; fold them into the cached decisions too.
            dec = [self._pasid_checks(pe.sre, pe.ere, i) or d for i, d in enumerate(dec)]
            self._fill(sid, pasid, addr, t, dec, did, eff)
        return t

    @staticmethod
    def _pasid_checks(sre: int, ere: int, idx: int) -> FaultReason | None:
        if idx & 4 and not sre:
            return FR.SM_SRE_CLEAR
        if idx & 2 and not ere:
            return FR.SM_ERE_CLEAR
        return None

    # -- decisions -----------------------------------------------------------------------
    @staticmethod
    def _fs_decisions(p: FsParams, *, rw: bool, us: bool, xd: bool, dirty: bool
                      ) -> list[Decision]:
        out: list[Decision] = []
        for idx in range(8):
            w, x, pr = bool(idx & 1), bool(idx & 2), bool(idx & 4)
            r: Decision = fs_access_fault(p, rw=rw, us=us, xd=xd, write=w, execute=x, priv=pr)
            if r is None and w and not dirty:
                r = MISS
            out.append(r)
        return out

    @staticmethod
    def _ss_decisions(p: SsParams, *, r: bool, w: bool, x: bool, dirty: bool,
                      first: list[Decision] | None) -> list[Decision]:
        codes = p.codes
        out: list[Decision] = []
        for idx in range(8):
            if first is not None and first[idx] is not None:
                out.append(first[idx])
                continue
            wr, ex = bool(idx & 1), bool(idx & 2)
            d: Decision = None
            if wr and not w:
                d = codes.write_denied
            elif not wr and not r:
                d = codes.read_denied
            elif ex and not x:
                d = codes.exec_denied
            elif wr and not dirty:
                d = MISS
            out.append(d)
        return out

    # -- cache fill / hit ----------------------------------------------------------------
    def _fill(self, sid: int, pasid: int | None, addr: int, t: Translation,
              dec: list[Decision], did: int, eff: int | None) -> None:
        size = t.page_size
        assert t.address is not None and t.pgtt is not None
        page = addr & ~(size - 1)
        out_base = t.address & ~(size - 1)
        if out_base < INTERRUPT_END and INTERRUPT_BASE < out_base + size:
            return  # never serve interrupt-range outputs from the cache
        e = IotlbEntry(did, eff, t.pgtt, page, size, out_base, dec, t.fpd,
                       t.leaf_pte or 0, t.level or 0)
        e.sids.add(sid)
        self.caches.iotlb_insert(e)
        if self._memoizable(pasid):
            self._memo[(sid, pasid, addr >> 12)] = e

    def _fill_psc(self, did: int, eff: int, addr: int,
                  path: list[tuple[int, int, int, int, int]]) -> None:
        """Cache the non-leaf first-stage entries of a successful walk."""
        for level, at, pte, rights, xd in path:
            cover = 3 + 9 * level
            self.caches.psc_insert(PscEntry(did, eff, level, (addr >> cover) << cover,
                                            pte & ADDR_MASK_4K, rights, xd, pte, at))

    def _memoizable(self, pasid: int | None) -> bool:
        # The memo is keyed by the request as issued; a request without PASID takes its
        # privilege from RID_PRIV, which the key does not show.
        return pasid is not None or self.ttm == TTM.LEGACY or not self.ecap.rprivs

    def _fill_negative(self, f: WalkFault, did: int, eff: int | None, pgtt: Pgtt, addr: int,
                       idx: int, fpd: bool) -> None:
        """Caching mode: cache a second-stage fault for this request class."""
        if not self.cm or f.reason in _ACCESS_ERRORS:
            return
        page = addr & ~0xFFF
        existing = self.caches.iotlb_lookup(did, eff, addr)
        if existing is not None and existing.negative and existing.pgtt == pgtt:
            existing.decision[idx] = f.reason
            return
        dec: list[Decision] = [MISS] * 8
        dec[idx] = f.reason
        self.caches.iotlb_insert(
            IotlbEntry(did, eff, pgtt, page, 4096, 0, dec, fpd, 0, f.level, negative=True))

    def _from_entry(self, e: IotlbEntry, addr: int, d: Decision, sid: int, pasid: int | None,
                    idx: int, fill: bool) -> Translation:
        pgtt = Pgtt(e.pgtt)
        if d is None:
            if fill:
                self.stats["iotlb_hits"] += 1
                e.sids.add(sid)
                if self._memoizable(pasid):
                    self._memo[(sid, pasid, addr >> 12)] = e
            return Translation(True, e.out_base | (addr & (e.page_size - 1)), e.page_size, None,
                               e.did, pgtt, e.leaf_pte, e.level, e.pasid, "iotlb", None, e.fpd)
        assert isinstance(d, FaultReason)
        return _fault(d, e.fpd, e.did, pgtt, e.pasid, e.level, source="iotlb")

    # ================================================================== ATS / device-TLB
    def translation_request(self, sid: int, addr: int, *, pasid: int | None = None,
                            write: bool = True, execute: bool = False, privileged: bool = False
                            ) -> Translation:
        """A PCIe ATS translation request: on success the device caches the result in its
        device-TLB (needs DTE=1 in scalable mode / TT=01 in legacy mode)."""
        if pasid is None:
            execute = privileged = False
        if self.te and self.ttm in (TTM.LEGACY, TTM.SCALABLE):
            scalable = self.ttm == TTM.SCALABLE
            cce = self._context(sid, scalable=scalable, use_caches=True, fill=True)
            if cce.fault is None:
                ctx = cce.entry
                if scalable and isinstance(ctx, ScalableContextEntry) and not ctx.dte:
                    t = _fault(FR.SM_DTE_CLEAR, cce.fpd, pasid=pasid)
                    return self._report(t, sid, addr, pasid, write=write, execute=execute,
                                        priv=privileged)
                if (not scalable and isinstance(ctx, LegacyContextEntry)
                        and ctx.tt != TranslationType.UNTRANSLATED_ATS):
                    t = _fault(FR.TT_BLOCKED, cce.fpd)
                    return self._report(t, sid, addr, pasid, write=write, execute=execute,
                                        priv=privileged)
        t = self.translate(sid, addr, pasid=pasid, write=write, execute=execute,
                           privileged=privileged)
        if t.ok and t.source != "disabled" and t.address is not None:
            size = t.page_size
            self.caches.devtlb_insert(DevtlbEntry(
                sid, pasid, addr & ~(size - 1), size, t.address & ~(size - 1), True, write,
                execute, privileged))
        return t

    def device_tlb_lookup(self, sid: int, addr: int, pasid: int | None = None
                          ) -> int | None:
        """What the device's ATC would use for ``addr`` (None: not cached)."""
        e = self.caches.devtlb_lookup(sid, pasid, addr)
        if e is None:
            return None
        return e.out_base | (addr & (e.page_size - 1))

    # ================================================================== part 2 front doors
    def process_invalidation_queue(self) -> int:
        """Fetch and execute descriptors from IQH to IQT; returns how many were processed."""
        return self.iq.process()

    def page_request(self, sid: int, addr: int, *, pasid: int | None = None,
                     write: bool = False, execute: bool = False, privileged: bool = False,
                     prgi: int = 0, last: bool = True, read: bool | None = None,
                     private_data: tuple[int, int] | None = None) -> PageRequestResult:
        """A PCIe page request: queued into the PRQ, or overflow/dropped/faulted."""
        return self.prq.request(sid, addr, pasid=pasid, write=write, execute=execute,
                                privileged=privileged, prgi=prgi, last=last, read=read,
                                private_data=private_data)

    # ================================================================== convenience
    def enable(self, root_table: int, *, scalable: bool | None = None) -> None:
        """Program RTADDR, latch it (SRTP) and enable translation the way a driver does."""
        sm = self.config.scalable_mode if scalable is None else scalable
        self.write_reg(Reg.RTADDR, root_table | (int(sm) << RTADDR_TTM_SHIFT), 8)
        keep = self.regs.gsts & (Gsts.QIES | Gsts.IRES)
        self.write_reg(Reg.GCMD, keep | (1 << 30), 4)
        self.write_reg(Reg.GCMD, keep | (1 << 31), 4)

    def faults(self) -> list[Fault]:
        return self.regs.records()
