"""Root and context entries, legacy and scalable mode (docs/VTD_FACTS.md §2).

Decoders are pure; the lookup functions read guest memory and raise
:class:`WalkFault` with the spec fault reason of the first failing check.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .bits import addr_bits, bits, decode_fields, encode_fields, haw_mask, join_qwords, mask
from .capability import Cap, Ecap
from .faults import FaultReason, WalkFault
from .memory import GuestMemory, MemoryAccessError

FR = FaultReason


class TranslationTableMode(IntEnum):
    """RTADDR.TTM."""

    LEGACY = 0b00
    SCALABLE = 0b01
    RESERVED = 0b10
    ABORT_DMA = 0b11


class TranslationType(IntEnum):
    """Legacy context-entry TT."""

    UNTRANSLATED = 0b00
    UNTRANSLATED_ATS = 0b01
    PASS_THROUGH = 0b10
    RESERVED = 0b11


def sid_of(bus: int, devfn: int) -> int:
    return (bus & 0xFF) << 8 | (devfn & 0xFF)


def bus_devfn(sid: int) -> tuple[int, int]:
    return (sid >> 8) & 0xFF, sid & 0xFF


# ------------------------------------------------------------------------------ legacy
@dataclass(frozen=True, slots=True)
class LegacyRootEntry:
    """16-byte legacy root entry, indexed by bus."""

    p: int = bits(0, 0)
    ctp: int = addr_bits(63, 12)

    @classmethod
    def decode(cls, qw0: int, qw1: int = 0) -> LegacyRootEntry:
        return decode_fields(cls, join_qwords(qw0, qw1))

    def encode(self) -> tuple[int, int]:
        v = encode_fields(self)
        return v & 0xFFFF_FFFF_FFFF_FFFF, v >> 64

    @staticmethod
    def reserved(qw0: int, qw1: int, haw: int) -> int:
        """Reserved bits set in the raw entry (0 if none)."""
        return (qw0 & (mask(11, 1) | haw_mask(haw))) | (qw1 << 64)


@dataclass(frozen=True, slots=True)
class LegacyContextEntry:
    """16-byte legacy context entry, indexed by devfn."""

    p: int = bits(0, 0)
    fpd: int = bits(1, 1)
    tt: int = bits(3, 2)
    slptptr: int = addr_bits(63, 12)
    aw: int = bits(66, 64)
    avail: int = bits(70, 67)
    did: int = bits(87, 72)

    @classmethod
    def decode(cls, qw0: int, qw1: int = 0) -> LegacyContextEntry:
        return decode_fields(cls, join_qwords(qw0, qw1))

    def encode(self) -> tuple[int, int]:
        v = encode_fields(self)
        return v & 0xFFFF_FFFF_FFFF_FFFF, v >> 64

    @staticmethod
    def reserved(qw0: int, qw1: int, haw: int) -> int:
        return (qw0 & (mask(11, 4) | haw_mask(haw))) | ((qw1 & (mask(7, 7) | mask(63, 24))) << 64)

    @property
    def translation_type(self) -> TranslationType:
        return TranslationType(self.tt)

    @property
    def levels(self) -> int:
        return self.aw + 2

    @property
    def agaw(self) -> int:
        return 30 + 9 * self.aw


# ------------------------------------------------------------------------------ scalable
@dataclass(frozen=True, slots=True)
class ScalableRootEntry:
    """16-byte scalable-mode root entry: lower (devfn 0-127) and upper (128-255) halves."""

    lp: int = bits(0, 0)
    lctp: int = addr_bits(63, 12)
    up: int = bits(64, 64)
    uctp: int = addr_bits(127, 76, base=64)

    @classmethod
    def decode(cls, qw0: int, qw1: int = 0) -> ScalableRootEntry:
        return decode_fields(cls, join_qwords(qw0, qw1))

    def encode(self) -> tuple[int, int]:
        v = encode_fields(self)
        return v & 0xFFFF_FFFF_FFFF_FFFF, v >> 64

    @staticmethod
    def reserved_lower(qw0: int, haw: int) -> int:
        return qw0 & (mask(11, 1) | haw_mask(haw))

    @staticmethod
    def reserved_upper(qw1: int, haw: int) -> int:
        return qw1 & (mask(11, 1) | haw_mask(haw))


@dataclass(frozen=True, slots=True)
class ScalableContextEntry:
    """32-byte scalable-mode context entry, indexed by devfn & 0x7F."""

    p: int = bits(0, 0)
    fpd: int = bits(1, 1)
    dte: int = bits(2, 2)
    paside: int = bits(3, 3)
    pre: int = bits(4, 4)
    pdts: int = bits(11, 9)
    pasiddirptr: int = addr_bits(63, 12)
    rid_pasid: int = bits(83, 64)
    rid_priv: int = bits(84, 84)

    @classmethod
    def decode(cls, qw0: int, qw1: int = 0, qw2: int = 0, qw3: int = 0) -> ScalableContextEntry:
        return decode_fields(cls, join_qwords(qw0, qw1, qw2, qw3))

    def encode(self) -> tuple[int, int, int, int]:
        v = encode_fields(self)
        return (v & 0xFFFF_FFFF_FFFF_FFFF, v >> 64 & 0xFFFF_FFFF_FFFF_FFFF, 0, 0)

    @staticmethod
    def reserved(qws: tuple[int, ...], haw: int, ecap: Ecap) -> int:
        """Reserved bits set; RID_PASID / RID_PRIV are reserved unless RPS / RPRIVS."""
        r = qws[0] & (mask(8, 5) | haw_mask(haw))
        hi = mask(63, 21)
        if not ecap.rps:
            hi |= mask(19, 0)
        if not ecap.rprivs:
            hi |= mask(20, 20)
        r |= (qws[1] & hi) << 64
        r |= (qws[2] | qws[3]) << 128
        return r

    @property
    def pasid_dir_entries(self) -> int:
        """Number of PASID-directory entries: 2^(PDTS+7)."""
        return 1 << (self.pdts + 7)


# ------------------------------------------------------------------------------ lookups
def _read(mem: GuestMemory, addr: int, count: int, reason: FaultReason) -> tuple[int, ...]:
    try:
        return mem.read_qwords(addr, count)
    except MemoryAccessError:
        raise WalkFault(reason, stage="root/context") from None


def legacy_context_lookup(
    mem: GuestMemory, rta: int, sid: int, cap: Cap, ecap: Ecap, haw: int
) -> LegacyContextEntry:
    """Root + context lookup for a request from ``sid`` in legacy mode."""
    bus, devfn = bus_devfn(sid)
    r0, r1 = _read(mem, rta + bus * 16, 2, FR.ROOT_ACCESS)
    if not r0 & 1:
        raise WalkFault(FR.ROOT_NOT_PRESENT, stage="root")
    if LegacyRootEntry.reserved(r0, r1, haw):
        raise WalkFault(FR.ROOT_RESERVED, stage="root")
    ctp = r0 & mask(63, 12)
    c0, c1 = _read(mem, ctp + devfn * 16, 2, FR.CONTEXT_ACCESS)
    fpd = bool(c0 & 2)
    if not c0 & 1:
        raise WalkFault(FR.CONTEXT_NOT_PRESENT, stage="context").with_fpd(fpd)
    if LegacyContextEntry.reserved(c0, c1, haw):
        raise WalkFault(FR.CONTEXT_RESERVED, stage="context")
    ce = LegacyContextEntry.decode(c0, c1)
    tt = ce.tt
    if (
        tt == TranslationType.RESERVED
        or (tt == TranslationType.UNTRANSLATED_ATS and not ecap.dt)
        or (tt == TranslationType.PASS_THROUGH and not ecap.pt)
        or not cap.supports_agaw(ce.aw)
    ):
        raise WalkFault(FR.CONTEXT_INVALID, stage="context").with_fpd(fpd)
    return ce


def scalable_context_lookup(
    mem: GuestMemory, rta: int, sid: int, ecap: Ecap, haw: int
) -> ScalableContextEntry:
    """Root + context lookup for a request from ``sid`` in scalable mode."""
    bus, devfn = bus_devfn(sid)
    r0, r1 = _read(mem, rta + bus * 16, 2, FR.SM_ROOT_ACCESS)
    if devfn < 0x80:
        present, half = r0 & 1, r0
        reserved = ScalableRootEntry.reserved_lower(r0, haw)
    else:
        present, half = r1 & 1, r1
        reserved = ScalableRootEntry.reserved_upper(r1, haw)
    if not present:
        raise WalkFault(FR.SM_ROOT_NOT_PRESENT, stage="root")
    if reserved:
        raise WalkFault(FR.SM_ROOT_RESERVED, stage="root")
    ctp = half & mask(63, 12)
    qws = _read(mem, ctp + (devfn & 0x7F) * 32, 4, FR.SM_CONTEXT_ACCESS)
    fpd = bool(qws[0] & 2)
    if not qws[0] & 1:
        raise WalkFault(FR.SM_CONTEXT_NOT_PRESENT, stage="context").with_fpd(fpd)
    if ScalableContextEntry.reserved(qws, haw, ecap):
        raise WalkFault(FR.SM_CONTEXT_RESERVED, stage="context")
    ce = ScalableContextEntry.decode(*qws)
    if (ce.dte and not ecap.dt) or (ce.pre and not ecap.prs) or (ce.paside and not ecap.pasid):
        raise WalkFault(FR.SM_CONTEXT_INVALID, stage="context").with_fpd(fpd)
    return ce
