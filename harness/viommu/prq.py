"""Page request queue (docs/VTD_FACTS.md §1.10, §7) and page group responses.

Hardware writes 32-byte page request descriptors at PQA+PQT, advances PQT,
sets PRS.PPR and raises a page-request event when PPR goes 0->1. A full queue
((PQT+32) mod size == PQH) sets PRS.PRO and drops the request; while PRO is
set further requests are dropped silently. Software answers each group that
ends with a last-page-in-group (LPIG) request with one page group response
(QI descriptor 0x9); the engine matches responses to outstanding groups by
(RID, PASID, PRGI) and records mismatches and reserved response codes so
checks can flag them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from .bits import QWORD
from .caches import ContextCacheEntry
from .capability import Ecap
from .descriptors import PageRequest, ResponseCode
from .faults import Fault, FaultReason, RequestType
from .memory import GuestMemory, MemoryAccessError
from .registers import PRS_PPR, PRS_PRO, FaultOutcome, Reg, RegisterFile
from .root_context import ScalableContextEntry, TranslationTableMode


class PrqHost(Protocol):
    """What the page request queue needs of its remapping unit (the model): a Protocol,
    as registers.RegisterHooks is, so that this module does not import model.py, which
    imports it."""

    ecap: Ecap
    regs: RegisterFile
    memory: GuestMemory
    te: bool
    ttm: TranslationTableMode

    def context_entry(self, sid: int) -> ContextCacheEntry: ...
    def record_fault(self, fault: Fault, fpd: bool = False) -> FaultOutcome: ...

FR = FaultReason
PRQ_DESC_SIZE = 32


class PageRequestStatus(Enum):
    QUEUED = "queued"
    OVERFLOW = "overflow"  # queue full: PRO set, request dropped
    DROPPED = "dropped"  # PRO already set
    FAULTED = "faulted"  # rejected with a recorded fault (e.g. PRE=0 -> 0x47)
    UNSUPPORTED = "unsupported"  # ECAP.PRS=0 or the queue is not set up
    WRITE_ERROR = "write-error"  # the descriptor could not be written to memory



@dataclass(frozen=True, slots=True)
class PageRequestResult:
    status: PageRequestStatus
    descriptor: PageRequest
    offset: int | None = None  # byte offset in the queue where it was written
    fault: FaultReason | None = None
    record: FaultOutcome | None = None

    @property
    def queued(self) -> bool:
        return self.status is PageRequestStatus.QUEUED


@dataclass(frozen=True, slots=True)
class PrgResponseMessage:
    """The PCIe PRG Response Message the unit sent a device for one page group response
    descriptor (the descriptor's layout is :class:`~.descriptors.PageGroupResponse`)."""

    rid: int
    pasid: int | None
    prgi: int
    rc: int
    lpig: bool
    matched: bool  # answered an outstanding group
    rc_reserved: bool  # RC not in {0, 1, 0xF}: the device treats it as Response Failure
    private: tuple[int, int] = (0, 0)

    @property
    def code(self) -> ResponseCode:
        try:
            return ResponseCode(self.rc)
        except ValueError:
            return ResponseCode.RESPONSE_FAILURE


class PageRequestQueue:
    """PRQ state of one remapping unit."""

    def __init__(self, model: PrqHost) -> None:
        self.model = model
        self.outstanding: Counter[tuple[int, int | None, int]] = Counter()
        self.responses: list[PrgResponseMessage] = []
        self.requests = 0

    # ------------------------------------------------------------------ geometry
    @property
    def size_bytes(self) -> int:
        """Queue size: 2^PQS 4 KiB pages (2^(PQS+7) 32-byte descriptors)."""
        return 4096 << (self.model.regs.get(Reg.PQA) & 7)

    @property
    def base(self) -> int:
        return self.model.regs.get(Reg.PQA) & ~0xFFF & 0xFFFF_FFFF_FFFF_FFFF

    def pending(self) -> list[PageRequest]:
        """Descriptors between PQH and PQT (what software has not consumed yet)."""
        regs = self.model.regs
        size = self.size_bytes
        h, t = regs.get(Reg.PQH) % size, regs.get(Reg.PQT) % size
        out = []
        while h != t:
            out.append(PageRequest.decode(*self.model.memory.read_qwords(
                self.base + h, 4)))
            h = (h + PRQ_DESC_SIZE) % size
        return out

    # ------------------------------------------------------------------ requests
    def request(self, sid: int, addr: int, *, pasid: int | None = None, write: bool = False,
                execute: bool = False, privileged: bool = False, prgi: int = 0,
                last: bool = True, read: bool | None = None,
                private_data: tuple[int, int] | None = None) -> PageRequestResult:
        """A PCIe page request from ``sid``. ``read`` defaults to ``not write``."""
        m = self.model
        regs = m.regs
        rd = (not write) if read is None else read
        if pasid is None:
            execute = privileged = False
        pd = private_data or (0, 0)
        desc = PageRequest(pp=int(pasid is not None), pdp=int(private_data is not None),
                           rid=sid & 0xFFFF, pasid=(pasid or 0) & 0xFFFFF, er=int(execute),
                           pmr=int(privileged), rd=int(rd), wr=int(write), lpig=int(last),
                           prgi=prgi & 0x1FF, addr=addr & ~0xFFF & QWORD,
                           private_data=(pd[0] & QWORD) | (pd[1] & QWORD) << 64)
        self.requests += 1
        if not m.ecap.prs:
            return PageRequestResult(PageRequestStatus.UNSUPPORTED, desc)
        fault = self._check_context(sid, pasid)
        if fault is not None:
            reason, fpd = fault
            rec = m.record_fault(Fault(sid=sid, addr=addr, fr=reason, pasid=pasid,
                                       request_type=RequestType.PAGE_REQUEST,
                                       priv=privileged, exe=execute), fpd)
            return PageRequestResult(PageRequestStatus.FAULTED, desc, fault=reason, record=rec)
        prs = regs.get(Reg.PRS)
        if prs & PRS_PRO:
            return PageRequestResult(PageRequestStatus.DROPPED, desc)
        size = self.size_bytes
        head = regs.get(Reg.PQH) % size
        tail = regs.get(Reg.PQT) % size
        if (tail + PRQ_DESC_SIZE) % size == head:
            regs.set(Reg.PRS, prs | PRS_PRO)
            if not prs & (PRS_PPR | PRS_PRO):
                regs.page_request_event()
            return PageRequestResult(PageRequestStatus.OVERFLOW, desc)
        at = self.base + tail
        try:
            for i, q in enumerate(desc.encode()):
                m.memory.write_u64(at + 8 * i, q)
        except MemoryAccessError:
            return PageRequestResult(PageRequestStatus.WRITE_ERROR, desc)
        regs.set(Reg.PQT, (tail + PRQ_DESC_SIZE) % size)
        regs.set(Reg.PRS, prs | PRS_PPR)
        if not prs & (PRS_PPR | PRS_PRO):
            regs.page_request_event()
        if last and not desc.is_stop_marker:
            self.outstanding[desc.group_key] += 1
        return PageRequestResult(PageRequestStatus.QUEUED, desc, offset=tail)

    def _check_context(self, sid: int, pasid: int | None) -> tuple[FaultReason, bool] | None:
        """Page requests need scalable mode, a present context with PRE=1 (and PASIDE).
        The context entry comes through the context cache, as for translations."""
        m = self.model
        if not m.te:
            return None  # translation disabled: nothing to check against
        if m.ttm != TranslationTableMode.SCALABLE:
            return FR.SM_TTM_LEGACY_PAGE_REQUEST, False
        cce = m.context_entry(sid)
        if cce.fault is not None:
            return cce.fault, cce.fpd
        ctx = cce.entry
        assert isinstance(ctx, ScalableContextEntry)
        if not ctx.pre:
            return FR.SM_PRE_CLEAR, bool(ctx.fpd)
        if pasid is not None and not ctx.paside:
            return FR.SM_PASIDE_CLEAR, bool(ctx.fpd)
        return None

    # ------------------------------------------------------------------ responses
    def respond(self, *, rid: int, pasid: int | None, prgi: int, rc: int, lpig: bool,
                private: tuple[int, int] = (0, 0)) -> PrgResponseMessage:
        """A page group response descriptor was executed (QI type 0x9)."""
        key = (rid, pasid, prgi)
        matched = self.outstanding[key] > 0
        if matched:
            self.outstanding[key] -= 1
            if not self.outstanding[key]:
                del self.outstanding[key]
        else:
            self.outstanding.pop(key, None)
        r = PrgResponseMessage(rid, pasid, prgi, rc, lpig, matched,
                              rc not in (0x0, 0x1, 0xF), private)
        self.responses.append(r)
        return r

    def unanswered(self) -> list[tuple[int, int | None, int]]:
        """Groups that ended (LPIG) and still wait for their response."""
        return sorted(self.outstanding, key=lambda k: (k[0], -1 if k[1] is None else k[1], k[2]))
