"""PASID directory and scalable-mode PASID table entries (docs/VTD_FACTS.md §3)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .bits import addr_bits, bits, decode_fields, encode_fields, haw_mask, join_qwords, mask
from .capability import Cap, Ecap
from .faults import FaultReason, WalkFault
from .memory import GuestMemory, MemoryAccessError
from .root_context import ScalableContextEntry

FR = FaultReason

PASID_BITS = 20
PASID_MAX = 1 << PASID_BITS
#: PASID Linux programs into RID_PASID (requests without PASID use it).
RID_PASID_DEFAULT = 0


class Pgtt(IntEnum):
    """PASID-granular translation type."""

    FIRST_STAGE = 0b001
    SECOND_STAGE = 0b010
    NESTED = 0b011
    PASS_THROUGH = 0b100

    @classmethod
    def is_valid(cls, value: int) -> bool:
        return 1 <= value <= 4


def pasid_dir_index(pasid: int) -> int:
    return (pasid >> 6) & 0x3FFF


def pasid_table_index(pasid: int) -> int:
    return pasid & 0x3F


@dataclass(frozen=True, slots=True)
class PasidDirEntry:
    """8-byte PASID directory entry."""

    p: int = bits(0, 0)
    fpd: int = bits(1, 1)
    smptblptr: int = addr_bits(63, 12)

    @classmethod
    def decode(cls, qw0: int) -> PasidDirEntry:
        return decode_fields(cls, qw0)

    def encode(self) -> int:
        return encode_fields(self)

    @staticmethod
    def reserved(qw0: int, haw: int) -> int:
        return qw0 & (mask(11, 2) | haw_mask(haw))


@dataclass(frozen=True, slots=True)
class PasidEntry:
    """64-byte scalable-mode PASID table entry. Bit numbers are overall (qw1 bit 0 = 64)."""

    p: int = bits(0, 0)
    fpd: int = bits(1, 1)
    aw: int = bits(4, 2)
    slee: int = bits(5, 5)
    pgtt: int = bits(8, 6)
    slade: int = bits(9, 9)
    slptptr: int = addr_bits(63, 12)
    did: int = bits(79, 64)
    pwsnp: int = bits(87, 87)
    pgsnp: int = bits(88, 88)
    cd: int = bits(89, 89)
    emte: int = bits(90, 90)
    emt: int = bits(93, 91)
    pwt: int = bits(94, 94)
    pcd: int = bits(95, 95)
    pat: int = bits(127, 96)
    sre: int = bits(128, 128)
    ere: int = bits(129, 129)
    flpm: int = bits(131, 130)
    wpe: int = bits(132, 132)
    nxe: int = bits(133, 133)
    smep: int = bits(134, 134)
    eafe: int = bits(135, 135)
    flptptr: int = addr_bits(191, 140, base=128)

    @classmethod
    def decode(cls, *qws: int) -> PasidEntry:
        return decode_fields(cls, join_qwords(*qws))

    def encode(self) -> tuple[int, ...]:
        v = encode_fields(self)
        return tuple((v >> (64 * i)) & 0xFFFF_FFFF_FFFF_FFFF for i in range(8))

    @staticmethod
    def reserved(qws: tuple[int, ...], haw: int, ecap: Ecap) -> int:
        """Reserved bits set (bit positions overall); SLADE needs SSADS, EAFE needs EAFS."""
        r0 = qws[0] & (mask(11, 10) | haw_mask(haw))
        if not ecap.slads:
            r0 |= qws[0] & mask(9, 9)
        r1 = qws[1] & mask(22, 16)
        r2 = qws[2] & (mask(11, 8) | haw_mask(haw))
        if not ecap.eafs:
            r2 |= qws[2] & mask(7, 7)
        r = r0 | r1 << 64 | r2 << 128
        for i in range(3, 8):
            r |= qws[i] << (64 * i)
        return r

    @property
    def translation_type(self) -> Pgtt:
        return Pgtt(self.pgtt)

    @property
    def ss_levels(self) -> int:
        return self.aw + 2

    @property
    def fs_levels(self) -> int:
        return 5 if self.flpm == 1 else 4


def invalid_reason(pe: PasidEntry, cap: Cap, ecap: Ecap) -> str | None:
    """Why a present, reserved-clean PASID entry is invalid programming (0x5B), or None."""
    pgtt = pe.pgtt
    if not Pgtt.is_valid(pgtt):
        return f"PGTT {pgtt:#05b} reserved"
    if pgtt == Pgtt.FIRST_STAGE and not ecap.flts:
        return "PGTT first-stage without ECAP.FLTS"
    if pgtt == Pgtt.SECOND_STAGE and not ecap.slts:
        return "PGTT second-stage without ECAP.SLTS"
    if pgtt == Pgtt.NESTED and not ecap.nest:
        return "PGTT nested without ECAP.NEST"
    if pgtt == Pgtt.PASS_THROUGH and not ecap.pt:
        return "PGTT pass-through without ECAP.PT"
    if pgtt in (Pgtt.FIRST_STAGE, Pgtt.NESTED):
        if pe.flpm > 1 or (pe.flpm == 1 and not cap.fl5lp):
            return f"FLPM {pe.flpm} unsupported"
    if pgtt in (Pgtt.SECOND_STAGE, Pgtt.NESTED) and not cap.supports_agaw(pe.aw):
        return f"AW {pe.aw} not in SAGAW"
    return None


@dataclass(frozen=True, slots=True)
class PasidLookup:
    """A PASID-table lookup result: the entries and the FPD that governs faults."""

    pasid: int
    dir_entry: PasidDirEntry
    entry: PasidEntry
    fpd: bool


def pasid_entry_lookup(
    mem: GuestMemory,
    ctx: ScalableContextEntry,
    pasid: int,
    cap: Cap,
    ecap: Ecap,
    haw: int,
) -> PasidLookup:
    """PASID directory + table lookup; raises WalkFault with 0x46/0x50-0x5B."""
    fpd = bool(ctx.fpd)
    didx = pasid_dir_index(pasid)
    if pasid >= PASID_MAX or didx >= ctx.pasid_dir_entries:
        raise WalkFault(FR.SM_PASID_TOO_LARGE, stage="pasid-dir").with_fpd(fpd)
    try:
        d0 = mem.read_u64(ctx.pasiddirptr + didx * 8)
    except MemoryAccessError:
        raise WalkFault(FR.SM_PASID_DIR_ACCESS, stage="pasid-dir") from None
    if not d0 & 1:
        raise WalkFault(FR.SM_PASID_DIR_NOT_PRESENT, stage="pasid-dir").with_fpd(
            fpd or bool(d0 & 2)
        )
    if PasidDirEntry.reserved(d0, haw):
        raise WalkFault(FR.SM_PASID_DIR_RESERVED, stage="pasid-dir").with_fpd(fpd)
    de = PasidDirEntry.decode(d0)
    fpd = fpd or bool(de.fpd)
    try:
        qws = mem.read_qwords(de.smptblptr + pasid_table_index(pasid) * 64, 8)
    except MemoryAccessError:
        raise WalkFault(FR.SM_PASID_ENTRY_ACCESS, stage="pasid-entry") from None
    if not qws[0] & 1:
        raise WalkFault(FR.SM_PASID_ENTRY_NOT_PRESENT, stage="pasid-entry").with_fpd(
            fpd or bool(qws[0] & 2)
        )
    if PasidEntry.reserved(qws, haw, ecap):
        raise WalkFault(FR.SM_PASID_ENTRY_RESERVED, stage="pasid-entry").with_fpd(fpd)
    pe = PasidEntry.decode(*qws)
    fpd = fpd or bool(pe.fpd)
    if invalid_reason(pe, cap, ecap) is not None:
        raise WalkFault(FR.SM_PASID_ENTRY_INVALID, stage="pasid-entry").with_fpd(fpd)
    return PasidLookup(pasid, de, pe, fpd)
