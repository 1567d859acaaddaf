"""VT-d register file (docs/VTD_FACTS.md §1): offsets, sizes, RW/RO/RW1C masks, the
GCMD->GSTS handshake, fault recording (FSTS/FRCD/FECTL) and the three
interrupt events (fault, invalidation completion, page request).

Side effects that reach beyond registers (latching the root table, running the
invalidation queue, register-based invalidation) are delegated to a
:class:`RegisterHooks` object, normally the :class:`~harness.viommu.model.VtdModel`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum, IntFlag
from typing import Protocol

from .capability import Cap, Ecap
from .faults import Fault

_U64 = 0xFFFF_FFFF_FFFF_FFFF


class Reg(IntEnum):
    """Fixed register offsets. IVA/IOTLB (IRO) and FRCD (FRO) come from the capabilities."""

    VER = 0x000
    CAP = 0x008
    ECAP = 0x010
    GCMD = 0x018
    GSTS = 0x01C
    RTADDR = 0x020
    CCMD = 0x028
    FSTS = 0x034
    FECTL = 0x038
    FEDATA = 0x03C
    FEADDR = 0x040
    FEUADDR = 0x044
    AFLOG = 0x058
    PMEN = 0x064
    PLMBASE = 0x068
    PLMLIMIT = 0x06C
    PHMBASE = 0x070
    PHMLIMIT = 0x078
    IQH = 0x080
    IQT = 0x088
    IQA = 0x090
    ICS = 0x09C
    IECTL = 0x0A0
    IEDATA = 0x0A4
    IEADDR = 0x0A8
    IEUADDR = 0x0AC
    IQERCD = 0x0B0
    IRTA = 0x0B8
    PQH = 0x0C0
    PQT = 0x0C8
    PQA = 0x0D0
    PRS = 0x0DC
    PECTL = 0x0E0
    PEDATA = 0x0E4
    PEADDR = 0x0E8
    PEUADDR = 0x0EC


class Gcmd(IntFlag):
    """GCMD command bits; GSTS uses the same positions for the matching status."""

    CFI = 1 << 23
    SIRTP = 1 << 24
    IRE = 1 << 25
    QIE = 1 << 26
    WBF = 1 << 27
    EAFL = 1 << 28
    SFL = 1 << 29
    SRTP = 1 << 30
    TE = 1 << 31


class Gsts(IntFlag):
    CFIS = 1 << 23
    IRTPS = 1 << 24
    IRES = 1 << 25
    QIES = 1 << 26
    WBFS = 1 << 27
    AFLS = 1 << 28
    FLS = 1 << 29
    RTPS = 1 << 30
    TES = 1 << 31


class Fsts(IntFlag):
    PFO = 1 << 0
    PPF = 1 << 1
    AFO = 1 << 2
    APF = 1 << 3
    IQE = 1 << 4
    ICE = 1 << 5
    ITE = 1 << 6
    PRO = 1 << 7


FSTS_FRI_SHIFT = 8
FSTS_FRI_MASK = 0xFF << FSTS_FRI_SHIFT
# Status bits whose being set already means a fault event was signalled.
_FAULT_EVENT_STATUS = Fsts.PFO | Fsts.PPF | Fsts.IQE | Fsts.ICE | Fsts.ITE

ICS_IWC = 1
PRS_PPR = 1 << 0
PRS_PRO = 1 << 1
XCTL_IM = 1 << 31  # FECTL / IECTL / PECTL interrupt mask
XCTL_IP = 1 << 30  # ... interrupt pending

CCMD_ICC = 1 << 63
CCMD_CIRG_SHIFT = 61
CCMD_CAIG_SHIFT = 59
IOTLB_IVT = 1 << 63
IOTLB_IIRG_SHIFT = 60
IOTLB_IAIG_SHIFT = 57

RTADDR_TTM_SHIFT = 10


class IqeCode(IntEnum):
    """IQERCD.IQEI: why FSTS.IQE was set."""

    NO_INFO = 0
    INVALID_TAIL = 1
    FETCH_ERROR = 2
    INVALID_TYPE = 3
    RESERVED_FIELD = 4
    INVALID_WIDTH = 5
    TAIL_MISALIGNED = 6
    INVALID_TTM = 7


class EventKind(Enum):
    FAULT = "fault"
    INV_COMPLETION = "invalidation-completion"
    PAGE_REQUEST = "page-request"


@dataclass(frozen=True, slots=True)
class Msi:
    """An interrupt message the unit sent."""

    kind: EventKind
    address: int
    data: int


class FaultOutcome(Enum):
    RECORDED = "recorded"
    COMPRESSED = "compressed"  # a pending record for the same SID already exists
    OVERFLOW = "overflow"  # next record busy: PFO set, fault dropped
    DROPPED = "dropped"  # PFO already set
    SUPPRESSED = "suppressed"  # qualified fault with FPD=1 (decided by the caller)


@dataclass(frozen=True, slots=True)
class RegSpec:
    name: str
    offset: int
    size: int
    rw: int = 0
    w1c: int = 0
    reset: int = 0


class RegisterHooks(Protocol):
    """What the register file asks of the rest of the unit."""

    def hook_srtp(self) -> None: ...
    def hook_te(self, enable: bool) -> None: ...
    def hook_qie(self, enable: bool) -> bool: ...
    def hook_sirtp(self) -> None: ...
    def hook_wbf(self) -> None: ...
    def hook_iqt(self) -> None: ...
    def hook_ccmd(self, value: int) -> int: ...
    def hook_iotlb(self, value: int, iva: int) -> int: ...


class RegisterFile:
    """Register storage with spec access semantics.

    ``read(offset, size)`` / ``write(offset, value, size)`` accept 4- and 8-byte
    accesses at 4-byte alignment: a 4-byte access to half of a 64-bit register
    reads/merges that half; an 8-byte access to a pair of 32-bit registers
    covers both.
    """

    def __init__(self, cap: Cap, ecap: Ecap, hooks: RegisterHooks | None = None) -> None:
        self.cap = cap
        self.ecap = ecap
        self.hooks = hooks
        self.msi_log: list[Msi] = []
        self.on_msi: Callable[[Msi], None] | None = None
        self.specs: dict[int, RegSpec] = {}
        self._values: dict[int, int] = {}
        self._half: dict[int, int] = {}  # offset of upper dword -> register start
        self._build(cap, ecap)
        self.nfr = cap.nfr + 1
        self.frcd_base = cap.fro * 16
        self.iva_offset = ecap.iro * 16
        self.frcd: list[int] = [0] * self.nfr
        self.next_frcd = 0
        self.reset()

    # ------------------------------------------------------------------ layout
    def _add(self, spec: RegSpec) -> None:
        self.specs[spec.offset] = spec
        if spec.size == 8:
            self._half[spec.offset + 4] = spec.offset

    def _build(self, cap: Cap, ecap: Ecap) -> None:
        ir = bool(ecap.ir)
        prs = bool(ecap.prs)
        pmr = bool(cap.plmr or cap.phmr)
        add = self._add
        add(RegSpec("VER", Reg.VER, 4, reset=0x10))
        add(RegSpec("CAP", Reg.CAP, 8, reset=cap.encode()))
        add(RegSpec("ECAP", Reg.ECAP, 8, reset=ecap.encode()))
        add(RegSpec("GCMD", Reg.GCMD, 4))
        add(RegSpec("GSTS", Reg.GSTS, 4))
        add(RegSpec("RTADDR", Reg.RTADDR, 8, rw=_U64 & ~0x3FF))
        add(RegSpec("CCMD", Reg.CCMD, 8, rw=0xE000_0003_FFFF_FFFF))
        add(RegSpec("FSTS", Reg.FSTS, 4, w1c=int(Fsts.PFO | Fsts.AFO | Fsts.APF | Fsts.IQE
                                                   | Fsts.ICE | Fsts.ITE | Fsts.PRO)))
        add(RegSpec("FECTL", Reg.FECTL, 4, rw=XCTL_IM, reset=XCTL_IM))
        add(RegSpec("FEDATA", Reg.FEDATA, 4, rw=0xFFFF))
        add(RegSpec("FEADDR", Reg.FEADDR, 4, rw=0xFFFF_FFFC))
        add(RegSpec("FEUADDR", Reg.FEUADDR, 4, rw=0xFFFF_FFFF))
        add(RegSpec("AFLOG", Reg.AFLOG, 8, rw=(_U64 & ~0x1FF) if cap.afl else 0))
        add(RegSpec("PMEN", Reg.PMEN, 4, rw=(1 << 31) if pmr else 0))
        add(RegSpec("PLMBASE", Reg.PLMBASE, 4, rw=0xFFFF_FFFF if cap.plmr else 0))
        add(RegSpec("PLMLIMIT", Reg.PLMLIMIT, 4, rw=0xFFFF_FFFF if cap.plmr else 0))
        add(RegSpec("PHMBASE", Reg.PHMBASE, 8, rw=_U64 if cap.phmr else 0))
        add(RegSpec("PHMLIMIT", Reg.PHMLIMIT, 8, rw=_U64 if cap.phmr else 0))
        add(RegSpec("IQH", Reg.IQH, 8))
        add(RegSpec("IQT", Reg.IQT, 8, rw=0x7FFF0 if ecap.qi else 0))
        iqa_rw = (_U64 & ~0xFFF) | 0x7 | (0x800 if ecap.smts else 0)
        add(RegSpec("IQA", Reg.IQA, 8, rw=iqa_rw if ecap.qi else 0))
        add(RegSpec("ICS", Reg.ICS, 4, w1c=ICS_IWC if ecap.qi else 0))
        add(RegSpec("IECTL", Reg.IECTL, 4, rw=XCTL_IM, reset=XCTL_IM))
        add(RegSpec("IEDATA", Reg.IEDATA, 4, rw=0xFFFF))
        add(RegSpec("IEADDR", Reg.IEADDR, 4, rw=0xFFFF_FFFC))
        add(RegSpec("IEUADDR", Reg.IEUADDR, 4, rw=0xFFFF_FFFF))
        add(RegSpec("IQERCD", Reg.IQERCD, 8))
        irta_rw = (_U64 & ~0xFFF) | 0xF | (0x800 if ecap.eim else 0)
        add(RegSpec("IRTA", Reg.IRTA, 8, rw=irta_rw if ir else 0))
        add(RegSpec("PQH", Reg.PQH, 8, rw=0x7FFE0 if prs else 0))
        add(RegSpec("PQT", Reg.PQT, 8, rw=0x7FFE0 if prs else 0))
        add(RegSpec("PQA", Reg.PQA, 8, rw=((_U64 & ~0xFFF) | 0x7) if prs else 0))
        add(RegSpec("PRS", Reg.PRS, 4, w1c=(PRS_PPR | PRS_PRO) if prs else 0))
        add(RegSpec("PECTL", Reg.PECTL, 4, rw=XCTL_IM if prs else 0, reset=XCTL_IM if prs else 0))
        add(RegSpec("PEDATA", Reg.PEDATA, 4, rw=0xFFFF if prs else 0))
        add(RegSpec("PEADDR", Reg.PEADDR, 4, rw=0xFFFF_FFFC if prs else 0))
        add(RegSpec("PEUADDR", Reg.PEUADDR, 4, rw=0xFFFF_FFFF if prs else 0))
        iva = ecap.iro * 16
        add(RegSpec("IVA", iva, 8, rw=(_U64 & ~0xFFF) | 0x7F))
        add(RegSpec("IOTLB", iva + 8, 8, rw=0xB003_FFFF_0000_0000))
        for i in range(cap.nfr + 1):
            base = cap.fro * 16 + 16 * i
            # FRCD: FI (RO) then SID..F; only F (bit 127) is writable (RW1C).
            add(RegSpec(f"FRCD{i}_LO", base, 8))
            add(RegSpec(f"FRCD{i}_HI", base + 8, 8, w1c=1 << 63))

    def reset(self) -> None:
        for off, spec in self.specs.items():
            self._values[off] = spec.reset
        self.frcd = [0] * self.nfr
        self.next_frcd = 0
        self.msi_log.clear()

    # ------------------------------------------------------------------ raw access
    def get(self, offset: int) -> int:
        """Current value of the register starting at ``offset`` (no side effects)."""
        if self.frcd_base <= offset < self.frcd_base + 16 * self.nfr:
            i, part = divmod(offset - self.frcd_base, 16)
            return (self.frcd[i] >> (8 * part)) & _U64 if part in (0, 8) else 0
        return self._values.get(offset, 0)

    def set(self, offset: int, value: int) -> None:
        """Hardware-side update (no access-mask or side effects)."""
        self._values[offset] = value

    def set_bits(self, offset: int, set_mask: int = 0, clear_mask: int = 0) -> None:
        self._values[offset] = (self._values.get(offset, 0) & ~clear_mask) | set_mask

    def name_of(self, offset: int) -> str:
        spec = self.specs.get(offset)
        return spec.name if spec else f"{offset:#x}"

    # ------------------------------------------------------------------ software access
    def read(self, offset: int, size: int = 4) -> int:
        if size not in (4, 8) or offset % 4:
            raise ValueError(f"register read at {offset:#x} size {size}: need 4/8 bytes, aligned")
        if size == 8:
            spec = self.specs.get(offset)
            if spec is not None and spec.size == 8:
                return self._read_reg(offset)
            return self.read(offset, 4) | self.read(offset + 4, 4) << 32
        if offset in self._half:
            return self._read_reg(self._half[offset]) >> 32
        spec = self.specs.get(offset)
        if spec is None:
            return 0
        return self._read_reg(offset) & 0xFFFF_FFFF

    def _read_reg(self, offset: int) -> int:
        if offset == Reg.GCMD:
            return 0  # write-only
        return self.get(offset)

    def write(self, offset: int, value: int, size: int = 4) -> None:
        if size not in (4, 8) or offset % 4:
            raise ValueError(f"register write at {offset:#x} size {size}: need 4/8 bytes, aligned")
        if size == 8:
            spec = self.specs.get(offset)
            if spec is not None and spec.size == 8:
                self._write_reg(offset, value & _U64, _U64)
                return
            self.write(offset, value & 0xFFFF_FFFF, 4)
            self.write(offset + 4, (value >> 32) & 0xFFFF_FFFF, 4)
            return
        value &= 0xFFFF_FFFF
        if offset in self._half:
            start = self._half[offset]
            self._write_reg(start, value << 32, 0xFFFF_FFFF << 32)
            return
        if offset in self.specs:
            self._write_reg(offset, value, 0xFFFF_FFFF)

    def _write_reg(self, offset: int, value: int, lanes: int) -> None:
        """Apply a write of ``value`` to the bytes selected by ``lanes``."""
        spec = self.specs[offset]
        if offset == Reg.GCMD:
            self._gcmd(value & 0xFF80_0000)
            return
        if spec.name.startswith("FRCD") and spec.name.endswith("_HI"):
            i = (offset - self.frcd_base) // 16
            if value & lanes & (1 << 63):
                self.frcd[i] &= ~(1 << 127)
                self._update_ppf()
            return
        old = self._values.get(offset, 0)
        rw = spec.rw & lanes
        new = (old & ~rw) | (value & rw)
        new &= ~(value & spec.w1c & lanes)
        self._values[offset] = new
        self._after_write(offset, old, new, value, lanes)

    def _after_write(self, offset: int, old: int, new: int, value: int, lanes: int) -> None:
        hooks = self.hooks
        if offset == Reg.FSTS:
            self._fault_status_cleared()
            if hooks is not None and old & ~new & (Fsts.IQE | Fsts.ITE):
                hooks.hook_iqt()  # fetching resumes once the queue error is cleared
        elif offset == Reg.FECTL:
            self._unmask(Reg.FECTL, EventKind.FAULT, Reg.FEADDR, Reg.FEUADDR, Reg.FEDATA)
        elif offset == Reg.ICS:
            if not new & ICS_IWC:
                self.set_bits(Reg.IECTL, clear_mask=XCTL_IP)
        elif offset == Reg.IECTL:
            self._unmask(Reg.IECTL, EventKind.INV_COMPLETION, Reg.IEADDR, Reg.IEUADDR, Reg.IEDATA)
        elif offset == Reg.PRS:
            if not new & (PRS_PPR | PRS_PRO):
                self.set_bits(Reg.PECTL, clear_mask=XCTL_IP)
        elif offset == Reg.PECTL:
            self._unmask(Reg.PECTL, EventKind.PAGE_REQUEST, Reg.PEADDR, Reg.PEUADDR, Reg.PEDATA)
        elif offset == Reg.IQT:
            if hooks is not None and lanes & 0xFFFF_FFFF:
                hooks.hook_iqt()
        elif offset == Reg.CCMD:
            if new & CCMD_ICC and lanes >> 32 and hooks is not None:
                caig = hooks.hook_ccmd(new) & 3
                v = new & ~CCMD_ICC & ~(3 << CCMD_CAIG_SHIFT)
                self._values[offset] = v | caig << CCMD_CAIG_SHIFT
        elif offset == self.iva_offset + 8:
            if new & IOTLB_IVT and lanes >> 32 and hooks is not None:
                iaig = hooks.hook_iotlb(new, self._values.get(self.iva_offset, 0)) & 3
                v = new & ~IOTLB_IVT & ~(3 << IOTLB_IAIG_SHIFT)
                self._values[offset] = v | iaig << IOTLB_IAIG_SHIFT

    # ------------------------------------------------------------------ GCMD / GSTS
    @property
    def gsts(self) -> int:
        return self._values[Reg.GSTS]

    def _gcmd(self, cmd: int) -> None:
        """One GCMD write: persistent bits make their status follow; one-shot bits act once."""
        hooks = self.hooks
        cap, ecap = self.cap, self.ecap
        gsts = self._values[Reg.GSTS]
        if cmd & Gcmd.SRTP:
            gsts &= ~Gsts.RTPS
            self._values[Reg.GSTS] = gsts
            if hooks is not None:
                hooks.hook_srtp()
            gsts |= Gsts.RTPS
        if cap.afl:
            if cmd & Gcmd.SFL:
                gsts |= Gsts.FLS
            gsts = (gsts & ~Gsts.AFLS) | (Gsts.AFLS if cmd & Gcmd.EAFL else 0)
        if cmd & Gcmd.WBF and cap.rwbf:
            if hooks is not None:
                hooks.hook_wbf()  # completes at once, so WBFS reads 0 afterwards
        if ecap.qi:
            want = bool(cmd & Gcmd.QIE)
            if want != bool(gsts & Gsts.QIES):
                self._values[Reg.GSTS] = gsts
                accepted = hooks.hook_qie(want) if hooks is not None else True
                if accepted:
                    gsts = (gsts & ~Gsts.QIES) | (Gsts.QIES if want else 0)
                    self._values[Reg.GSTS] = gsts
                    if not want:
                        self._values[Reg.IQH] = 0  # spec: IQH reset when QI is disabled
                    elif hooks is not None:
                        hooks.hook_iqt()  # a queue set up before enabling runs now
        if ecap.ir:
            if cmd & Gcmd.SIRTP:
                if hooks is not None:
                    hooks.hook_sirtp()
                gsts |= Gsts.IRTPS
            gsts = (gsts & ~Gsts.IRES) | (Gsts.IRES if cmd & Gcmd.IRE else 0)
            gsts = (gsts & ~Gsts.CFIS) | (Gsts.CFIS if cmd & Gcmd.CFI else 0)
        want_te = bool(cmd & Gcmd.TE)
        if want_te != bool(gsts & Gsts.TES):
            if not want_te:
                self.next_frcd = 0
            if hooks is not None:
                hooks.hook_te(want_te)
            gsts = (gsts & ~Gsts.TES) | (Gsts.TES if want_te else 0)
        self._values[Reg.GSTS] = gsts & 0xFFFF_FFFF

    # ------------------------------------------------------------------ faults
    @property
    def fsts(self) -> int:
        return self._values[Reg.FSTS]

    def record_fault(self, fault: Fault) -> FaultOutcome:
        """Primary fault logging: record ``fault`` into the next FRCD (docs/VTD_FACTS.md §1.8)."""
        fsts = self._values[Reg.FSTS]
        if fsts & Fsts.PFO:
            return FaultOutcome.DROPPED
        for rec in self.frcd:
            if rec >> 127 and (rec >> 64) & 0xFFFF == fault.sid:
                return FaultOutcome.COMPRESSED
        idx = self.next_frcd
        if self.frcd[idx] >> 127:
            self._values[Reg.FSTS] = fsts | Fsts.PFO
            self._fault_event(fsts)
            return FaultOutcome.OVERFLOW
        self.frcd[idx] = fault.encode()
        self.next_frcd = (idx + 1) % self.nfr
        if not fsts & Fsts.PPF:
            new = (fsts & ~FSTS_FRI_MASK) | Fsts.PPF | (idx << FSTS_FRI_SHIFT)
            self._values[Reg.FSTS] = new
            self._fault_event(fsts)
        return FaultOutcome.RECORDED

    def records(self) -> list[Fault]:
        """Pending fault records (F=1), in register order."""
        return [Fault.decode(r) for r in self.frcd if r >> 127]

    def _update_ppf(self) -> None:
        pending = any(r >> 127 for r in self.frcd)
        fsts = self._values[Reg.FSTS]
        fsts = (fsts | Fsts.PPF) if pending else (fsts & ~Fsts.PPF)
        self._values[Reg.FSTS] = fsts
        self._fault_status_cleared()

    def set_fault_status(self, bit: Fsts) -> None:
        """Hardware sets IQE/ICE/ITE: signals a fault event if none was outstanding."""
        fsts = self._values[Reg.FSTS]
        self._values[Reg.FSTS] = fsts | bit
        self._fault_event(fsts)

    def _fault_event(self, prev_fsts: int) -> None:
        if prev_fsts & _FAULT_EVENT_STATUS:
            return
        self._signal(Reg.FECTL, EventKind.FAULT, Reg.FEADDR, Reg.FEUADDR, Reg.FEDATA)

    def _fault_status_cleared(self) -> None:
        if not self._values[Reg.FSTS] & _FAULT_EVENT_STATUS:
            self.set_bits(Reg.FECTL, clear_mask=XCTL_IP)

    # ------------------------------------------------------------------ events
    def _signal(self, ctl: int, kind: EventKind, addr: int, uaddr: int, data: int) -> None:
        """Set IP; send the message unless masked (IP then clears)."""
        self.set_bits(ctl, set_mask=XCTL_IP)
        if not self._values[ctl] & XCTL_IM:
            self._send(ctl, kind, addr, uaddr, data)

    def _unmask(self, ctl: int, kind: EventKind, addr: int, uaddr: int, data: int) -> None:
        v = self._values[ctl]
        if v & XCTL_IP and not v & XCTL_IM:
            self._send(ctl, kind, addr, uaddr, data)

    def _send(self, ctl: int, kind: EventKind, addr: int, uaddr: int, data: int) -> None:
        msi = Msi(kind, self._values[uaddr] << 32 | self._values[addr], self._values[data])
        self.msi_log.append(msi)
        self.set_bits(ctl, clear_mask=XCTL_IP)
        if self.on_msi is not None:
            self.on_msi(msi)

    def completion_event(self) -> None:
        """Invalidation wait with IF=1 completed."""
        if self._values[Reg.ICS] & ICS_IWC:
            return
        self.set_bits(Reg.ICS, set_mask=ICS_IWC)
        self._signal(Reg.IECTL, EventKind.INV_COMPLETION, Reg.IEADDR, Reg.IEUADDR, Reg.IEDATA)

    def page_request_event(self) -> None:
        self._signal(Reg.PECTL, EventKind.PAGE_REQUEST, Reg.PEADDR, Reg.PEUADDR, Reg.PEDATA)
