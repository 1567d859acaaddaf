"""Queued invalidation (docs/VTD_FACTS.md §1.9, §6): the invalidation queue engine.

The queue is processed synchronously: on every IQT write while QIES=1 (and
when QI is enabled with a non-empty queue, or IQE/ITE is cleared) descriptors
are fetched from IQH up to IQT and executed in order. A bad descriptor sets
FSTS.IQE with IQERCD.IQEI, leaves IQH pointing at it and stops fetching until
software clears IQE.

Descriptors are decoded by :mod:`harness.viommu.descriptors` (spec layouts and
reserved bits); this engine adds the checks that depend on this unit's
capabilities beyond SMTS/PRS/PDS (DT, IR, MAMV, drain support).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, cast

from . import descriptors as dsc
from .bits import mask
from .caches import TranslationCaches
from .capability import Cap, Ecap
from .memory import GuestMemory, MemoryAccessError
from .prq import PageRequestQueue
from .registers import Fsts, IqeCode, Reg, RegisterFile


class QueueHost(Protocol):
    """What the queue needs of its remapping unit (the model): a Protocol, as
    registers.RegisterHooks is, so that this module does not import model.py, which
    imports it."""

    cap: Cap
    ecap: Ecap
    regs: RegisterFile
    memory: GuestMemory
    caches: TranslationCaches
    prq: PageRequestQueue  # page group responses answer its requests

_U64 = 0xFFFF_FFFF_FFFF_FFFF
_STOPPED = int(Fsts.IQE | Fsts.ITE)  # plain int: IntFlag arithmetic is slow in hot paths
DescType = dsc.DescType


class DescriptorError(Exception):
    def __init__(self, code: IqeCode, why: str) -> None:
        super().__init__(why)
        self.code = code
        self.why = why


def decode_descriptor(qws: tuple[int, ...], *, wide: bool, caps: dsc.QiCaps, dt: bool,
                      ir: bool, mamv: int, drain_ok: bool) -> dsc.InvDescriptor:
    """Decode and validate one fetched descriptor; raises DescriptorError with the IQEI."""
    width: dsc.Width = 256 if wide else 128
    d = dsc.decode_inv_desc(*qws[: width // 64], width=width, caps=caps)
    if isinstance(d, dsc.InvalidDescriptor):
        raise DescriptorError(d.code, d.reason)
    if isinstance(d, dsc.DeviceTlbInv | dsc.PasidDeviceTlbInv) and not dt:
        raise DescriptorError(IqeCode.INVALID_TYPE, "device-TLB invalidation without ECAP.DT")
    if isinstance(d, dsc.IecInv) and not ir:
        raise DescriptorError(IqeCode.INVALID_TYPE, "IEC invalidation without ECAP.IR")
    if isinstance(d, dsc.IotlbInv | dsc.PasidIotlbInv) and d.g == 3 and d.am > mamv:
        raise DescriptorError(IqeCode.RESERVED_FIELD, f"AM {d.am} > MAMV {mamv}")
    if isinstance(d, dsc.IotlbInv) and (d.dw or d.dr) and not drain_ok:
        raise DescriptorError(IqeCode.RESERVED_FIELD, "drain bits without CAP.DWD/DRD")
    return d


ats_range = dsc.device_tlb_range


@dataclass(frozen=True, slots=True)
class ProcessedDescriptor:
    """Log entry: what was executed (or rejected) at which queue index."""

    index: int
    descriptor: dsc.InvDescriptor | None
    error: IqeCode | None = None
    note: str = ""


class InvalidationQueue:
    """The QI engine of one remapping unit."""

    def __init__(self, model: QueueHost) -> None:
        self.model = model
        self.enabled = False
        self.last_type: int | None = None
        self.log: list[ProcessedDescriptor] = []
        self.log_limit = 4096
        self.processed = 0
        # Source-ids whose device-TLB invalidations time out (ITE) / complete invalidly (ICE);
        # lets tests and checks provoke the error paths.
        self.ite_sids: set[int] = set()
        self.ice_sids: set[int] = set()
        self.caps = dsc.QiCaps(scalable_mode=bool(model.ecap.smts), prs=bool(model.ecap.prs),
                               pds=bool(model.ecap.pds))

    # ------------------------------------------------------------------ geometry
    @property
    def wide(self) -> bool:
        iqa = self.model.regs.get(Reg.IQA)
        return bool(self.model.ecap.smts and iqa >> 11 & 1)

    @property
    def entries(self) -> int:
        qs = self.model.regs.get(Reg.IQA) & 7
        return 1 << (qs + 8 - int(self.wide))

    @property
    def base(self) -> int:
        return self.model.regs.get(Reg.IQA) & ~0xFFF & _U64

    # ------------------------------------------------------------------ enable
    def set_enabled(self, enable: bool) -> bool:
        """GCMD.QIE handling; returns whether the change is accepted."""
        regs = self.model.regs
        if not enable:
            # Disabling with work outstanding is a software error; the unit keeps QI on.
            if regs.get(Reg.IQH) != regs.get(Reg.IQT) and not regs.fsts & Fsts.IQE:
                return False
            self.enabled = False
            return True
        # Descriptors already queued (IQT != IQH) run once QIES is set (register file).
        self.enabled = True
        return True

    # ------------------------------------------------------------------ processing
    def _error(self, code: IqeCode, index: int, desc: dsc.InvDescriptor | None,
               why: str) -> None:
        regs = self.model.regs
        regs.set(Reg.IQERCD, (regs.get(Reg.IQERCD) & ~0xF) | int(code))
        regs.set_fault_status(Fsts.IQE)
        self._log(ProcessedDescriptor(index, desc, code, why))

    def _log(self, p: ProcessedDescriptor) -> None:
        self.log.append(p)
        if len(self.log) > self.log_limit:
            del self.log[: len(self.log) - self.log_limit]

    def process(self) -> int:
        """Execute descriptors from IQH to IQT; returns how many completed."""
        m = self.model
        regs = m.regs
        if not self.enabled or regs.get(Reg.FSTS) & _STOPPED:
            return 0
        wide = self.wide
        shift = 4 + int(wide)
        size = self.entries
        tail_raw = regs.get(Reg.IQT)
        if wide and tail_raw & 0x10:
            self._error(IqeCode.TAIL_MISALIGNED, -1, None, "IQT bit 4 set in a 256-bit queue")
            return 0
        tail = tail_raw >> shift
        if tail >= size:
            self._error(IqeCode.INVALID_TAIL, -1, None, f"IQT index {tail} >= queue size {size}")
            return 0
        head = (regs.get(Reg.IQH) >> shift) % size
        base = self.base
        nq = 4 if wide else 2
        ecap, cap = m.ecap, m.cap
        caps = self.caps
        done = 0
        while head != tail:
            try:
                qws = m.memory.read_qwords(base + (head << shift), nq)
            except MemoryAccessError:
                self._error(IqeCode.FETCH_ERROR, head, None, "descriptor fetch failed")
                return done
            try:
                desc = decode_descriptor(qws, wide=wide, caps=caps, dt=bool(ecap.dt),
                                         ir=bool(ecap.ir), mamv=cap.mamv,
                                         drain_ok=bool(cap.dwd and cap.drd))
            except DescriptorError as e:
                self._error(e.code, head, None, e.why)
                return done
            stop = self._execute(desc, head)
            head = (head + 1) % size
            regs.set(Reg.IQH, head << shift)
            self.last_type = int(desc.TYPE)
            done += 1
            self.processed += 1
            if stop:
                break
        return done

    # ------------------------------------------------------------------ execution
    def _execute(self, d: dsc.InvDescriptor, index: int) -> bool:
        """Apply one descriptor; returns True if processing must stop after it."""
        m = self.model
        c = m.caches
        note = ""
        apply_invalidation(c, d, psi=bool(m.cap.psi))
        if isinstance(d, dsc.DeviceTlbInv | dsc.PasidDeviceTlbInv):
            regs = m.regs
            if d.sid in self.ite_sids:
                regs.set(Reg.IQERCD, (regs.get(Reg.IQERCD) & ~mask(47, 32)) | d.sid << 32)
                regs.set_fault_status(Fsts.ITE)
                self._log(ProcessedDescriptor(index, d, None, "device-TLB invalidation timed out"))
                return True
            if d.sid in self.ice_sids:
                regs.set(Reg.IQERCD, (regs.get(Reg.IQERCD) & ~mask(63, 48)) | d.sid << 48)
                regs.set_fault_status(Fsts.ICE)
                note = "invalid device-TLB invalidation completion"
        elif isinstance(d, dsc.IecInv):
            note = "interrupt entry cache not modelled"
        elif isinstance(d, dsc.WaitDesc):
            if d.sw:
                try:
                    m.memory.write_u32(d.status_addr, d.status_data)
                except MemoryAccessError:
                    note = "status write failed"
            if d.if_:
                m.regs.completion_event()
        elif isinstance(d, dsc.PageGroupResponse):
            pd = d.private_data
            m.prq.respond(rid=d.rid, pasid=d.pasid if d.pp else None, prgi=d.prgi,
                          rc=int(d.rc), lpig=bool(d.lpig), private=(pd & _U64, pd >> 64))
        self._log(ProcessedDescriptor(index, d, None, note))
        return False


def apply_invalidation(c: TranslationCaches, d: dsc.InvDescriptor, *, psi: bool = True) -> None:
    """What one descriptor removes from the translation caches, by the spec's rules (VT-d
    6.5.2): the one place these rules live, for the model's queue and for the QI check's
    replay of a real trace. `psi`: CAP.PSI; without it a page-selective IOTLB
    invalidation is done as domain-selective. Other descriptor types touch no cache."""
    if isinstance(d, dsc.ContextCacheInv):
        if d.g == 1:
            c.inv_context_global()
        elif d.g == 2:
            c.inv_context_domain(d.did)
        else:
            c.inv_context_device(d.sid, d.fm)
    elif isinstance(d, dsc.IotlbInv):
        if d.g == dsc.IotlbGranularity.GLOBAL:
            c.inv_iotlb_global()
        elif d.g == dsc.IotlbGranularity.DOMAIN or not psi:
            c.inv_iotlb_domain(d.did)
        else:
            c.inv_iotlb_page(d.did, d.addr, d.am, bool(d.ih))
    elif isinstance(d, dsc.DeviceTlbInv):
        base, span = ats_range(d.addr, d.s)
        c.inv_devtlb(d.sid, None, base, span)
    elif isinstance(d, dsc.PasidDeviceTlbInv):
        base, span = ats_range(d.addr, d.s)
        c.inv_devtlb(d.sid, d.pasid, base, span, all_pasids=bool(d.g))
    elif isinstance(d, dsc.PasidIotlbInv):
        if d.g == dsc.PasidIotlbGranularity.PASID:
            c.inv_piotlb_pasid(d.did, d.pasid)
        else:
            c.inv_piotlb_page(d.did, d.pasid, d.addr, d.am, bool(d.ih))
    elif isinstance(d, dsc.PasidCacheInv):
        if d.g == 0:
            c.inv_pasid_domain(d.did)
        elif d.g == 1:
            c.inv_pasid_selective(d.did, d.pasid)
        else:
            c.inv_pasid_global()


# ---------------------------------------------------------------------------------- encoders
# Descriptor builders (4 qwords; a 128-bit queue uses the first two). Used by tests and by
# harnesses that drive a real unit's queue.
Desc = tuple[int, int, int, int]


def _t(t: int) -> int:
    return (t & 0xF) | ((t >> 4) & 0x7) << 9


def cc_desc(g: int, did: int = 0, sid: int = 0, fm: int = 0) -> Desc:
    return (_t(0x1) | g << 4 | did << 16 | sid << 32 | fm << 48, 0, 0, 0)


def iotlb_desc(g: int, did: int = 0, addr: int = 0, am: int = 0, ih: int = 0, dr: int = 0,
               dw: int = 0) -> Desc:
    return (_t(0x2) | g << 4 | dr << 6 | dw << 7 | did << 16, addr | ih << 6 | am, 0, 0)


def devtlb_desc(sid: int, addr: int = 0, s: int = 0, pfsid: int = 0, mip: int = 0) -> Desc:
    q0 = _t(0x3) | (pfsid & 0xF) << 12 | mip << 16 | sid << 32 | (pfsid >> 4) << 52
    return (q0, addr | s, 0, 0)


def iec_desc(g: int = 0, iidx: int = 0, im: int = 0) -> Desc:
    return (_t(0x4) | g << 4 | im << 27 | iidx << 32, 0, 0, 0)


def wait_desc(*, sw: int = 0, if_: int = 0, fn: int = 0, pd: int = 0, status_data: int = 0,
              status_addr: int = 0) -> Desc:
    q0 = _t(0x5) | if_ << 4 | sw << 5 | fn << 6 | pd << 7 | status_data << 32
    return (q0, status_addr, 0, 0)


def piotlb_desc(g: int, did: int, pasid: int, addr: int = 0, am: int = 0, ih: int = 0) -> Desc:
    return (_t(0x6) | g << 4 | did << 16 | pasid << 32, addr | ih << 6 | am, 0, 0)


def pc_desc(g: int, did: int = 0, pasid: int = 0) -> Desc:
    return (_t(0x7) | g << 4 | did << 16 | pasid << 32, 0, 0, 0)


def pdevtlb_desc(sid: int, pasid: int, *, g: int = 0, s: int = 0, addr: int = 0,
                 pfsid: int = 0, mip: int = 0) -> Desc:
    q0 = _t(0x8) | mip << 4 | (pfsid & 0xF) << 12 | sid << 16 | pasid << 32 | (pfsid >> 4) << 52
    return (q0, g | s << 11 | addr, 0, 0)


def prg_resp_desc(rid: int, prgi: int, rc: int = 0, pasid: int | None = None,
                  lpig: int = 0) -> Desc:
    # rc may be a reserved code (tests provoke the IQE), so it is not made a ResponseCode.
    d = dsc.PageGroupResponse(pp=int(pasid is not None), rc=cast(dsc.ResponseCode, rc), rid=rid,
                              pasid=pasid or 0, lpig=lpig, prgi=prgi)
    q = d.encode(256)
    return q[0], q[1], q[2], q[3]
