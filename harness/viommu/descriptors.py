"""Queued-invalidation descriptors and page-request descriptors, typed.

Layouts follow the VT-d specification as digested in docs/VTD_FACTS.md §6.2 / §7.1. Bit
numbers in this module are absolute over the descriptor (qw1 bit 0 = bit 64), the
same convention as the digest, so a field table here can be checked against it
line by line.

* :func:`decode_inv_desc` turns raw qwords into one of the frozen dataclasses
  below, or an :class:`InvalidDescriptor` carrying the IQEI code hardware would
  report (3 invalid type, 4 reserved-field violation, 5 invalid width).
* every descriptor class has ``encode(width)`` returning the qwords, so
  ``decode_inv_desc(*d.encode(w), width=w) == d``.
* reserved bits are the SPEC's. QEMU 10.0 is stricter in places (PFSID, PD);
  that is recorded as data in :data:`QEMU_10_RESERVED_MASKS` for a differential
  check, never applied by the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from typing import Any, ClassVar, Literal

from .bits import (
    QWORD,
    addr_bits,
    bits,
    defined_mask,
    encode_fields,
    field_values,
    join_qwords,
    layout,
    mask,
    split_bits,
    split_qwords,
)
from .registers import IqeCode  # IQERCD.IQEI: the register's field, one enum for every cause

PAGE_SHIFT = 12

Width = Literal[128, 256]


# --------------------------------------------------------------------------- enums


class DescType(IntEnum):
    """Invalidation descriptor type (type[6:4] in bits 11:9, type[3:0] in bits 3:0)."""

    CONTEXT_CACHE = 0x1
    IOTLB = 0x2
    DEVICE_TLB = 0x3
    IEC = 0x4
    WAIT = 0x5
    PASID_IOTLB = 0x6
    PASID_CACHE = 0x7
    PASID_DEVICE_TLB = 0x8
    PAGE_GROUP_RESPONSE = 0x9


class ContextCacheGranularity(IntEnum):
    GLOBAL = 1
    DOMAIN = 2
    DEVICE = 3


class IotlbGranularity(IntEnum):
    GLOBAL = 1
    DOMAIN = 2
    PAGE = 3


class IecGranularity(IntEnum):
    GLOBAL = 0
    INDEX = 1


class PasidIotlbGranularity(IntEnum):
    """00/01 are reserved (QEMU raises IQE for them too)."""

    PASID = 2  # all non-global entries of PASID within DID
    PAGE = 3  # page-selective within PASID + DID


class PasidCacheGranularity(IntEnum):
    """10 is reserved."""

    DOMAIN = 0
    PASID = 1
    GLOBAL = 3


class PasidDeviceTlbGranularity(IntEnum):
    PASID = 0
    ALL_PASIDS = 1


class ResponseCode(IntEnum):
    """Page group response codes; other values are reserved."""

    SUCCESS = 0x0
    INVALID_REQUEST = 0x1
    RESPONSE_FAILURE = 0xF


_TYPE_BITS = mask(3, 0) | mask(11, 9)


def desc_type_of(qw0: int) -> int:
    """Effective 7-bit type: type[6:4] lives in bits 11:9, type[3:0] in bits 3:0."""
    return ((qw0 >> 5) & 0x70) | (qw0 & 0xF)


# ---------------------------------------------------------------- base classes


@dataclass(frozen=True)
class _BitStruct:
    """Common encode for the descriptor and page-request dataclasses."""

    def _raw(self) -> int:
        return encode_fields(self)


@dataclass(frozen=True)
class InvDescriptor(_BitStruct):
    """Base of every decoded invalidation descriptor."""

    TYPE: ClassVar[DescType]
    # Descriptors that only exist in 256-bit form (docs/VTD_FACTS.md §6.1).
    ONLY_256: ClassVar[bool] = False
    SCALABLE_ONLY: ClassVar[bool] = False

    @property
    def desc_type(self) -> DescType:
        return self.TYPE

    def encode(self, width: Width = 256) -> tuple[int, ...]:
        """Raw qwords (qw0 first): two for a 128-bit queue, four for 256-bit."""
        if width not in (128, 256):
            raise ValueError(f"width must be 128 or 256, not {width}")
        if width == 128 and self.ONLY_256:
            raise ValueError(f"{type(self).__name__} exists only as a 256-bit descriptor")
        raw = self._raw() | int(self.TYPE)  # all types < 0x10: bits 11:9 stay 0
        if width == 128 and raw >> 128:
            raise ValueError(f"{type(self).__name__} has data in qw2/qw3: needs width=256")
        return split_qwords(raw, width // 64)

    def to_bytes(self, width: Width = 256) -> bytes:
        return b"".join(q.to_bytes(8, "little") for q in self.encode(width))


# A field is "reserved by default": whatever no field names, and isn't the type,
# is reserved. Fields whose reserved-ness depends on capabilities are handled in
# _extra_reserved().


@dataclass(frozen=True)
class ContextCacheInv(InvDescriptor):
    """0x1 context-cache invalidate."""

    TYPE: ClassVar[DescType] = DescType.CONTEXT_CACHE
    g: ContextCacheGranularity = bits(5, 4, ContextCacheGranularity.GLOBAL, enum=ContextCacheGranularity)
    did: int = bits(31, 16)  # ignored by hardware in scalable mode
    sid: int = bits(47, 32)
    fm: int = bits(49, 48)  # function mask: 0 none, 1..3 mask SID bits 2, 2:1, 2:0


@dataclass(frozen=True)
class IotlbInv(InvDescriptor):
    """0x2 IOTLB invalidate."""

    TYPE: ClassVar[DescType] = DescType.IOTLB
    g: IotlbGranularity = bits(5, 4, IotlbGranularity.GLOBAL, enum=IotlbGranularity)
    dw: int = bits(6, 6)
    dr: int = bits(7, 7)
    did: int = bits(31, 16)
    am: int = bits(69, 64)
    ih: int = bits(70, 70)
    addr: int = addr_bits(127, 76, base=64)

    def range(self) -> tuple[int, int]:
        """(base, size) for a page-selective invalidation (meaningless otherwise)."""
        return iotlb_range(self.addr, self.am)


@dataclass(frozen=True)
class DeviceTlbInv(InvDescriptor):
    """0x3 device-TLB invalidate (ATS, requests without PASID)."""

    TYPE: ClassVar[DescType] = DescType.DEVICE_TLB
    pfsid: int = split_bits((15, 12), (63, 52))  # PF source-id, split [3:0] / [15:4]
    mip: int = bits(20, 16)
    sid: int = bits(47, 32)
    s: int = bits(64, 64)
    addr: int = addr_bits(127, 76, base=64)

    def range(self) -> tuple[int, int]:
        return device_tlb_range(self.addr, self.s)


@dataclass(frozen=True)
class IecInv(InvDescriptor):
    """0x4 interrupt-entry-cache invalidate."""

    TYPE: ClassVar[DescType] = DescType.IEC
    g: IecGranularity = bits(4, 4, IecGranularity.GLOBAL, enum=IecGranularity)
    im: int = bits(31, 27)  # index mask: 2^IM entries
    iidx: int = bits(47, 32)


@dataclass(frozen=True)
class WaitDesc(InvDescriptor):
    """0x5 invalidation wait."""

    TYPE: ClassVar[DescType] = DescType.WAIT
    if_: int = bits(4, 4)  # IF: set ICS.IWC, raise the completion event
    sw: int = bits(5, 5)  # SW: write status_data to status_addr
    fn: int = bits(6, 6)  # FN: fence
    pd: int = bits(7, 7)  # PD: page-request drain (reserved when ECAP.PDS=0)
    status_data: int = bits(63, 32)
    status_addr: int = addr_bits(127, 66, base=64)  # dword aligned, kept in place


@dataclass(frozen=True)
class PasidIotlbInv(InvDescriptor):
    """0x6 PASID-based IOTLB invalidate."""

    TYPE: ClassVar[DescType] = DescType.PASID_IOTLB
    ONLY_256: ClassVar[bool] = True
    SCALABLE_ONLY: ClassVar[bool] = True
    g: PasidIotlbGranularity = bits(5, 4, PasidIotlbGranularity.PASID, enum=PasidIotlbGranularity)
    did: int = bits(31, 16)
    pasid: int = bits(51, 32)
    am: int = bits(69, 64)
    ih: int = bits(70, 70)
    addr: int = addr_bits(127, 76, base=64)

    def range(self) -> tuple[int, int]:
        return iotlb_range(self.addr, self.am)


@dataclass(frozen=True)
class PasidCacheInv(InvDescriptor):
    """0x7 PASID-cache invalidate. Valid in either queue width (docs/VTD_FACTS.md §6.1 only
    restricts 0x6/0x8); QEMU 10.0 processes it as a no-op."""

    TYPE: ClassVar[DescType] = DescType.PASID_CACHE
    SCALABLE_ONLY: ClassVar[bool] = True
    g: PasidCacheGranularity = bits(5, 4, PasidCacheGranularity.GLOBAL, enum=PasidCacheGranularity)
    did: int = bits(31, 16)
    pasid: int = bits(51, 32)


@dataclass(frozen=True)
class PasidDeviceTlbInv(InvDescriptor):
    """0x8 PASID-based device-TLB invalidate."""

    TYPE: ClassVar[DescType] = DescType.PASID_DEVICE_TLB
    ONLY_256: ClassVar[bool] = True
    SCALABLE_ONLY: ClassVar[bool] = True
    mip: int = bits(8, 4)
    pfsid: int = split_bits((15, 12), (63, 52))
    sid: int = bits(31, 16)
    pasid: int = bits(51, 32)
    g: PasidDeviceTlbGranularity = bits(64, 64, PasidDeviceTlbGranularity.PASID, enum=PasidDeviceTlbGranularity)
    s: int = bits(75, 75)
    addr: int = addr_bits(127, 76, base=64)

    def range(self) -> tuple[int, int]:
        return device_tlb_range(self.addr, self.s)


@dataclass(frozen=True)
class PageGroupResponse(InvDescriptor):
    """0x9 page group response (needs ECAP.PRS). LPIG (bit 66) and PDP/private data are
    VT-d ≤3.x fields: reserved since 4.0 and Linux stopped setting LPIG in v6.18, but
    the spec generation this suite checks against still names them."""

    TYPE: ClassVar[DescType] = DescType.PAGE_GROUP_RESPONSE
    pp: int = bits(4, 4)
    pdp: int = bits(5, 5)
    rc: ResponseCode = bits(15, 12, ResponseCode.SUCCESS, enum=ResponseCode)
    rid: int = bits(31, 16)
    pasid: int = bits(51, 32)
    lpig: int = bits(66, 66)
    prgi: int = bits(75, 67)
    private_data: int = bits(255, 128)


_CLASSES: dict[int, type[InvDescriptor]] = {
    c.TYPE: c
    for c in (ContextCacheInv, IotlbInv, DeviceTlbInv, IecInv, WaitDesc, PasidIotlbInv,
              PasidCacheInv, PasidDeviceTlbInv, PageGroupResponse)
}


# ------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class QiCaps:
    """The capability bits that change what a descriptor may contain."""

    scalable_mode: bool = True  # ECAP.SMTS: types 0x6-0x8 exist
    prs: bool = True  # ECAP.PRS: type 0x9 exists
    pds: bool = True  # ECAP.PDS: wait descriptor PD bit is defined

    @classmethod
    def from_ecap(cls, ecap: int) -> QiCaps:
        return cls(scalable_mode=bool(ecap >> 43 & 1), prs=bool(ecap >> 29 & 1),
                   pds=bool(ecap >> 42 & 1))


# Every optional descriptor feature present: decode by layout alone.
FULL_CAPS = QiCaps()
# What QEMU 10.0.2's emulated unit advertises with x-scalable-mode=on (no PRS, no PDS).
QEMU_10_SM_CAPS = QiCaps(scalable_mode=True, prs=False, pds=False)


@dataclass(frozen=True)
class InvalidDescriptor:
    """A descriptor hardware must reject with FSTS.IQE; ``code`` is the IQEI value."""

    code: IqeCode
    desc_type: int
    reason: str
    qwords: tuple[int, ...]
    # Per-qword bits that violate the reserved mask (all zero unless RESERVED_FIELD
    # because of reserved bits rather than a reserved encoding).
    reserved_bits: tuple[int, ...] = ()


def reserved_masks(desc_type: int, width: Width = 256,
                   caps: QiCaps = QiCaps()) -> tuple[int, ...]:
    """Spec reserved-bit masks per qword for a known type, ``width // 64`` entries."""
    cls = _CLASSES[desc_type]
    total = (1 << width) - 1
    reserved = total & ~defined_mask(cls) & ~_TYPE_BITS
    if cls is WaitDesc and not caps.pds:
        reserved |= mask(7, 7)
    return split_qwords(reserved, width // 64)


@lru_cache(maxsize=1 << 16)
def decode_inv_desc(qw0: int, qw1: int, qw2: int = 0, qw3: int = 0, *,
                    width: Width = 256,
                    caps: QiCaps = QiCaps()) -> InvDescriptor | InvalidDescriptor:
    """Decode one descriptor as fetched from a queue of ``width`` bits.

    Cached: a pure function of its arguments returning frozen values, and real
    traces repeat the same few hundred descriptors (a queue of wait descriptors
    cycling through its status slots, the same buffer pages unmapped again).

    Checks in hardware's order of discovery: is the type one this unit knows (3),
    does it fit the queue width (5), then reserved bits and reserved encodings (4).
    For a 128-bit queue qw2/qw3 are not part of the descriptor and must be 0.
    """
    if width not in (128, 256):
        raise ValueError(f"width must be 128 or 256, not {width}")
    qwords = (qw0, qw1, qw2, qw3)[: width // 64]
    if width == 128 and (qw2 or qw3):
        raise ValueError("a 128-bit descriptor has no qw2/qw3")
    t = desc_type_of(qw0)
    cls = _CLASSES.get(t)
    if cls is None:
        return InvalidDescriptor(IqeCode.INVALID_TYPE, t, f"unknown type {t:#x}", qwords)
    if cls.SCALABLE_ONLY and not caps.scalable_mode:
        return InvalidDescriptor(IqeCode.INVALID_TYPE, t,
                                 f"type {t:#x} needs scalable mode (ECAP.SMTS)", qwords)
    if cls is PageGroupResponse and not caps.prs:
        return InvalidDescriptor(IqeCode.INVALID_TYPE, t,
                                 "page group response needs ECAP.PRS", qwords)
    if cls.ONLY_256 and width == 128:
        return InvalidDescriptor(IqeCode.INVALID_WIDTH, t,
                                 f"type {t:#x} is a 256-bit descriptor in a 128-bit queue",
                                 qwords)
    masks = reserved_masks(t, width, caps)
    bad = tuple(q & m for q, m in zip(qwords, masks, strict=True))
    if any(bad):
        where = ", ".join(f"qw{i} {b:#x}" for i, b in enumerate(bad) if b)
        return InvalidDescriptor(IqeCode.RESERVED_FIELD, t, f"reserved bits set: {where}",
                                 qwords, bad)
    raw = join_qwords(*qwords)
    kwargs: dict[str, Any] = {}
    for spec in layout(cls):
        name, value = spec.name, spec.get(raw)
        if spec.enum is not None:
            try:
                value = spec.enum(value)
            except ValueError:
                return InvalidDescriptor(
                    IqeCode.RESERVED_FIELD, t,
                    f"reserved {name.upper()} encoding {value:#x} for type {t:#x}", qwords)
        kwargs[name] = value
    return cls(**kwargs)


def decode_or_raise(qw0: int, qw1: int, qw2: int = 0, qw3: int = 0, *, width: Width = 256,
                    caps: QiCaps = QiCaps()) -> InvDescriptor:
    """:func:`decode_inv_desc` for callers that treat an invalid descriptor as a bug."""
    d = decode_inv_desc(qw0, qw1, qw2, qw3, width=width, caps=caps)
    if isinstance(d, InvalidDescriptor):
        raise ValueError(f"invalid descriptor (IQEI {int(d.code)}): {d.reason}")
    return d


# ------------------------------------------------------------- range helpers


def iotlb_range(addr: int, am: int) -> tuple[int, int]:
    """(base, size) covered by an IOTLB/PASID-IOTLB PSI: 2^AM pages, ADDR aligned down
    to that size (software must align it; hardware ignores the low bits)."""
    size = 1 << (PAGE_SHIFT + am)
    return addr & ~(size - 1) & QWORD, size


def device_tlb_range(addr: int, s: int) -> tuple[int, int]:
    """(base, size) of a device-TLB invalidation (ATS encoding). S=0: the 4 KiB page at
    ADDR. S=1: size = 8 KiB << (number of trailing 1 bits of ADDR[63:12]), base = ADDR
    aligned down to size. ADDR=0x7FFF_FFFF_FFFF_F000 with S=1 is "everything" (2^64)."""
    page = addr >> PAGE_SHIFT
    if not s:
        return page << PAGE_SHIFT, 1 << PAGE_SHIFT
    ones = (~page & (page + 1)).bit_length() - 1  # trailing ones of the page number
    size = min(1 << (PAGE_SHIFT + 1 + ones), 1 << 64)
    return addr & ~(size - 1) & QWORD, size


def device_tlb_encode(base: int, size: int) -> tuple[int, int]:
    """Inverse of :func:`device_tlb_range`: (ADDR, S) for a naturally aligned power-of-two
    range of at least 4 KiB."""
    if size < 4096 or size & (size - 1) or base & (size - 1) or size > 1 << 64:
        raise ValueError(f"{size:#x} at {base:#x} is not an aligned power-of-two range")
    if size == 4096:
        return base, 0
    # ADDR[12 + k - 1 : 12] all ones for size 8K << k, so the first 0 marks the size.
    ones = (size >> (PAGE_SHIFT + 1)) - 1
    return (base | (ones << PAGE_SHIFT)) & QWORD, 1


# ------------------------------------------------------ page request (PRQ) side


@dataclass(frozen=True)
class PageRequest(_BitStruct):
    """32-byte page request descriptor hardware writes into the PRQ (docs/VTD_FACTS.md §7.1)."""

    TYPE_PAGE_REQUEST: ClassVar[int] = 1
    type: int = bits(7, 0, TYPE_PAGE_REQUEST)
    pp: int = bits(8, 8)
    pdp: int = bits(9, 9)
    rid: int = bits(31, 16)
    pasid: int = bits(51, 32)
    er: int = bits(52, 52)  # execute requested
    pmr: int = bits(53, 53)  # privileged-mode requested
    rd: int = bits(64, 64)
    wr: int = bits(65, 65)
    lpig: int = bits(66, 66)
    prgi: int = bits(75, 67)
    addr: int = addr_bits(127, 76, base=64)
    private_data: int = bits(255, 128)

    RESERVED: ClassVar[tuple[int, int, int, int]] = (
        mask(15, 10) | mask(63, 54), 0, 0, 0)

    @classmethod
    def decode(cls, qw0: int, qw1: int, qw2: int = 0, qw3: int = 0) -> PageRequest:
        """Decode; reserved bits are ignored (software reads them, hardware writes 0)."""
        return cls(**field_values(cls, join_qwords(qw0, qw1, qw2, qw3)))

    @classmethod
    def from_bytes(cls, data: bytes) -> PageRequest:
        if len(data) != 32:
            raise ValueError(f"a page request descriptor is 32 bytes, got {len(data)}")
        q = [int.from_bytes(data[i:i + 8], "little") for i in range(0, 32, 8)]
        return cls.decode(*q)

    def encode(self) -> tuple[int, int, int, int]:
        q = split_qwords(self._raw(), 4)
        return q[0], q[1], q[2], q[3]

    def to_bytes(self) -> bytes:
        return b"".join(q.to_bytes(8, "little") for q in self.encode())

    @property
    def is_stop_marker(self) -> bool:
        """LPIG with neither read nor write: marks the end of a PASID's requests and
        needs no response."""
        return bool(self.lpig and not self.rd and not self.wr)

    @property
    def group_key(self) -> tuple[int, int | None, int]:
        """(RID, PASID or None, PRGI): what a page group response names to answer it."""
        return self.rid, self.pasid if self.pp else None, self.prgi

    @property
    def needs_response(self) -> bool:
        """Last request of a group, or (VT-d 3.x) any request carrying private data."""
        return not self.is_stop_marker and bool(self.lpig or self.pdp)

    def response(self, rc: ResponseCode = ResponseCode.SUCCESS) -> PageGroupResponse:
        """The page group response that answers this request's group."""
        return PageGroupResponse(
            pp=self.pp, pdp=self.pdp, rc=rc, rid=self.rid,
            pasid=self.pasid if self.pp else 0, lpig=self.lpig, prgi=self.prgi,
            private_data=self.private_data if self.pdp else 0)


# ----------------------------------------------------------- QEMU divergences


@dataclass(frozen=True)
class QemuMasks:
    """QEMU's reserved masks for one type (IQE if any bit is set), qw0 then qw1;
    qw2/qw3 are checked as all-reserved where QEMU reads them."""

    qw0: int
    qw1: int
    note: str


# QEMU 10.0 (hw/i386/intel_iommu_internal.h, docs/VTD_FACTS.md §6.3). Data for the
# differential check only. Types absent here: 0x7 is accepted as a no-op without
# any mask check (in scalable mode); 0x9 is rejected as an unknown type. Beyond
# masks QEMU also rejects a wait with neither SW nor IF, and a PASID-IOTLB with
# G=00/01 (the latter agrees with the spec).
QEMU_10_RESERVED_MASKS: dict[DescType, QemuMasks] = {
    DescType.CONTEXT_CACHE: QemuMasks(0xFFFC_0000_0000_F1C0, QWORD, "same as spec"),
    DescType.IOTLB: QemuMasks(0xFFFF_FFFF_0000_F100, 0xF80, "same as spec"),
    DescType.DEVICE_TLB: QemuMasks(0xFFFF_0000_FFE0_F1F0, 0xFFE, "PFSID treated reserved"),
    DescType.IEC: QemuMasks(0xFFFF_0000_07FF_F1E0, QWORD, "same as spec"),
    DescType.WAIT: QemuMasks(0xFFFF_F180, 0x3, "PD treated reserved"),
    DescType.PASID_IOTLB: QemuMasks(0xFFF0_0000_0000_F1C0, 0xF80, "same as spec"),
    DescType.PASID_DEVICE_TLB: QemuMasks(0xFFF0_0000_0000_F000, 0x7FE,
                                         "PFSID treated reserved"),
}

# The post-10.1 PRI series (QPRI) adds 0x9 with this mask: PDP and LPIG's
# neighbours above bit 12 reserved (LPIG itself stays accepted).
QEMU_PRI_PAGE_GROUP_RESPONSE_MASKS = QemuMasks(0xFFF0_0000_0000_01E0, 0xFFFF_FFFF_FFFF_F003,
                                               "PDP treated reserved")


def qemu10_divergent_bits(desc_type: DescType, caps: QiCaps = QEMU_10_SM_CAPS
                          ) -> tuple[int, int]:
    """Bits (qw0, qw1) QEMU 10.0 rejects although the spec defines them, for ``caps``.
    Empty for types where QEMU matches the spec."""
    q = QEMU_10_RESERVED_MASKS[desc_type]
    spec = reserved_masks(desc_type, 128, caps)
    return q.qw0 & ~spec[0], q.qw1 & ~spec[1]


__all__ = [
    "FULL_CAPS",
    "QEMU_10_RESERVED_MASKS",
    "QEMU_10_SM_CAPS",
    "QEMU_PRI_PAGE_GROUP_RESPONSE_MASKS",
    "ContextCacheGranularity",
    "ContextCacheInv",
    "DescType",
    "DeviceTlbInv",
    "IecGranularity",
    "IecInv",
    "InvDescriptor",
    "InvalidDescriptor",
    "IotlbGranularity",
    "IotlbInv",
    "PageGroupResponse",
    "PageRequest",
    "PasidCacheGranularity",
    "PasidCacheInv",
    "PasidDeviceTlbGranularity",
    "PasidDeviceTlbInv",
    "PasidIotlbGranularity",
    "PasidIotlbInv",
    "QemuMasks",
    "QiCaps",
    "ResponseCode",
    "WaitDesc",
    "decode_inv_desc",
    "decode_or_raise",
    "desc_type_of",
    "device_tlb_encode",
    "device_tlb_range",
    "iotlb_range",
    "qemu10_divergent_bits",
    "reserved_masks",
]
