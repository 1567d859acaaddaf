"""Typed trace events.

Every event carries ``name``, its 1-based ``line`` in the trace file, and ``pid``
/ ``timestamp`` when QEMU ran with ``-msg timestamp=on`` (else None). Events the
suite relies on have a dataclass here; every other event of the table becomes a
:class:`GenericEvent` holding its arguments by their trace-events names.

A typed class declares its fields in the trace-event argument order, and
``ARGS`` maps QEMU's argument names to field names when they differ (QEMU's
``addr`` for a register offset is ``offset`` here). If a QEMU version changes an
event's arguments so that they no longer fit, that event falls back to
GenericEvent rather than being mis-assigned (see parser.EventTable checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..viommu.descriptors import (
    FULL_CAPS,
    DescType,
    InvalidDescriptor,
    InvDescriptor,
    QiCaps,
    Width,
    decode_inv_desc,
)


# Read-only by convention, not frozen: a frozen dataclass costs five times as much to
# construct (3.6 vs 0.7 us measured here) and a run's trace holds hundreds of thousands
# of events. unsafe_hash keeps them hashable values.
@dataclass(slots=True, unsafe_hash=True)
class TraceEvent:
    """``pid`` is what QEMU prints before ``@``: the id of the thread that logged
    the event (vCPU or I/O thread), not the process id."""

    name: str
    line: int
    pid: int | None
    timestamp: float | None

    EVENT: ClassVar[str] = ""
    ARGS: ClassVar[dict[str, str]] = {}


@dataclass(slots=True, unsafe_hash=True)
class GenericEvent(TraceEvent):
    args: dict[str, object]


@dataclass(slots=True, unsafe_hash=True)
class BadLine(TraceEvent):
    """A line that is not a known event with well-formed arguments. Reported, never
    dropped: ``name`` is the event name if one could be read, else ""."""

    text: str
    reason: str


# ------------------------------------------------------------------ registers


@dataclass(slots=True, unsafe_hash=True)
class RegWrite(TraceEvent):
    EVENT: ClassVar[str] = "vtd_reg_write"
    ARGS: ClassVar[dict[str, str]] = {"addr": "offset", "val": "value"}
    offset: int
    size: int
    value: int


@dataclass(slots=True, unsafe_hash=True)
class RegRead(TraceEvent):
    EVENT: ClassVar[str] = "vtd_reg_read"
    ARGS: ClassVar[dict[str, str]] = {"addr": "offset"}
    offset: int
    size: int


@dataclass(slots=True, unsafe_hash=True)
class RegDmarRoot(TraceEvent):
    """SRTP latched a root table: its address and whether RTADDR selected scalable mode."""

    EVENT: ClassVar[str] = "vtd_reg_dmar_root"
    addr: int
    scalable: bool


# ------------------------------------------------------- invalidation queue


# The type words QEMU's vtd_process_inv_desc passes to trace_vtd_inv_desc.
# "device-piotlb" (0x8) arrives with the ATS/PASID series after 10.0.
QEMU_TYPE_WORDS: dict[str, DescType] = {
    "context-cache": DescType.CONTEXT_CACHE, "iotlb": DescType.IOTLB,
    "device": DescType.DEVICE_TLB, "iec": DescType.IEC, "wait": DescType.WAIT,
    "p-iotlb": DescType.PASID_IOTLB, "device-piotlb": DescType.PASID_DEVICE_TLB,
}


@dataclass(slots=True, unsafe_hash=True)
class InvDesc(TraceEvent):
    """A raw descriptor as QEMU fetched it: ``low`` is qw0, ``high`` qw1 (QEMU traces
    only the first 128 bits, even from a 256-bit queue). ``type`` is QEMU's word for
    it (:data:`QEMU_TYPE_WORDS`). QEMU 10.0 prints no line for PASID-cache (0x7)
    descriptors and none for types it rejects before its switch."""

    EVENT: ClassVar[str] = "vtd_inv_desc"
    ARGS: ClassVar[dict[str, str]] = {"hi": "high", "lo": "low"}
    type: str
    high: int
    low: int

    def decode(self, *, width: Width = 256,
               caps: QiCaps = FULL_CAPS) -> InvDescriptor | InvalidDescriptor:
        """Decode with descriptors.py. qw2/qw3 are not traced and taken as 0."""
        return decode_inv_desc(self.low, self.high, width=width, caps=caps)











@dataclass(slots=True, unsafe_hash=True)
class InvDescWaitSw(TraceEvent):
    EVENT: ClassVar[str] = "vtd_inv_desc_wait_sw"
    addr: int
    data: int


@dataclass(slots=True, unsafe_hash=True)
class InvDescWaitIrq(TraceEvent):
    EVENT: ClassVar[str] = "vtd_inv_desc_wait_irq"
    msg: str


@dataclass(slots=True, unsafe_hash=True)
class InvDescWaitWriteFail(TraceEvent):
    EVENT: ClassVar[str] = "vtd_inv_desc_wait_write_fail"
    hi: int
    lo: int



@dataclass(slots=True, unsafe_hash=True)
class InvQiHead(TraceEvent):
    """IQH read by the guest: descriptor index (not a byte offset)."""

    EVENT: ClassVar[str] = "vtd_inv_qi_head"
    head: int


@dataclass(slots=True, unsafe_hash=True)
class InvQiTail(TraceEvent):
    """IQT written by the guest: descriptor index. QEMU names the argument ``head``."""

    EVENT: ClassVar[str] = "vtd_inv_qi_tail"
    ARGS: ClassVar[dict[str, str]] = {"head": "tail"}
    tail: int




# -------------------------------------------------------------- PASID cache (11.1)


@dataclass(slots=True, unsafe_hash=True)
class PasidCacheReset(TraceEvent):
    EVENT: ClassVar[str] = "vtd_pasid_cache_reset"


@dataclass(slots=True, unsafe_hash=True)
class InvDescPasidCacheGsi(TraceEvent):
    EVENT: ClassVar[str] = "vtd_inv_desc_pasid_cache_gsi"


@dataclass(slots=True, unsafe_hash=True)
class InvDescPasidCacheDsi(TraceEvent):
    EVENT: ClassVar[str] = "vtd_inv_desc_pasid_cache_dsi"
    domain: int


@dataclass(slots=True, unsafe_hash=True)
class InvDescPasidCachePsi(TraceEvent):
    EVENT: ClassVar[str] = "vtd_inv_desc_pasid_cache_psi"
    domain: int
    pasid: int


@dataclass(slots=True, unsafe_hash=True)
class PasidCacheDevsi(TraceEvent):
    EVENT: ClassVar[str] = "vtd_pasid_cache_devsi"
    bus: int
    dev: int
    fn: int


# --------------------------------------------------------------- translation


@dataclass(slots=True, unsafe_hash=True)
class IotlbPageUpdate(TraceEvent):
    """IOTLB fill. ``slpte`` is QEMU's name; with first-stage it holds the FS PTE."""

    EVENT: ClassVar[str] = "vtd_iotlb_page_update"
    ARGS: ClassVar[dict[str, str]] = {"addr": "iova"}
    sid: int
    iova: int
    slpte: int
    domain: int


@dataclass(slots=True, unsafe_hash=True)
class IotlbPageHit(TraceEvent):
    EVENT: ClassVar[str] = "vtd_iotlb_page_hit"
    ARGS: ClassVar[dict[str, str]] = {"addr": "iova"}
    sid: int
    iova: int
    slpte: int
    domain: int




@dataclass(slots=True, unsafe_hash=True)
class DmarTranslate(TraceEvent):
    EVENT: ClassVar[str] = "vtd_dmar_translate"
    bus: int
    slot: int
    func: int
    iova: int
    gpa: int
    mask: int  # page offset mask: 0xfff for 4 KiB

    @property
    def sid(self) -> int:
        return self.bus << 8 | self.slot << 3 | self.func


@dataclass(slots=True, unsafe_hash=True)
class DmarFault(TraceEvent):
    EVENT: ClassVar[str] = "vtd_dmar_fault"
    sid: int
    fault: int  # fault reason code
    addr: int
    is_write: bool


@dataclass(slots=True, unsafe_hash=True)
class FrrNew(TraceEvent):
    """A fault record written to FRCD[index]: ``lo`` is bits 63:0, ``hi`` 127:64."""

    EVENT: ClassVar[str] = "vtd_frr_new"
    index: int
    hi: int
    lo: int



@dataclass(slots=True, unsafe_hash=True)
class SwitchAddressSpace(TraceEvent):
    EVENT: ClassVar[str] = "vtd_switch_address_space"
    bus: int
    slot: int
    fn: int
    on: bool


TYPED_EVENTS: tuple[type[TraceEvent], ...] = (
    RegWrite, RegRead, RegDmarRoot, InvDesc, InvDescWaitSw, InvDescWaitIrq, InvDescWaitWriteFail,
    InvQiHead, InvQiTail, PasidCacheReset, InvDescPasidCacheGsi, InvDescPasidCacheDsi,
    InvDescPasidCachePsi, PasidCacheDevsi, IotlbPageUpdate, IotlbPageHit, DmarTranslate, DmarFault,
    FrrNew, SwitchAddressSpace,
)
# svmval's QEMU (host_setup/qemu_build/patches/0002-intel-iommu-trace-ats-prq.patch):
# observability events the stock unit lacks.


@dataclass(slots=True, unsafe_hash=True)
class PrqDesc(TraceEvent):
    """A page request descriptor the unit wrote into the guest's page request queue."""

    EVENT: ClassVar[str] = "vtd_prq_desc"
    sid: int
    pasid: int
    addr: int
    prgi: int
    lpig: bool
    rd: bool
    wr: bool
    priv: bool
    exec: bool
    tail: int



# svmval's QEMU (patches/0003-intel-iommu-trace-walk-source.patch): the time-ordered
# record of what each first-stage walk read and of what a hit's source holds now.


@dataclass(slots=True, unsafe_hash=True)
class FsWalkEntry(TraceEvent):
    """One first-stage entry a walk read (``addr`` its GPA, ``entry`` its value as read,
    before the walk set A/D); a walk's entries come top level first, then its fill
    (vtd_iotlb_page_update) or its fault (vtd_dmar_fault)."""

    EVENT: ClassVar[str] = "vtd_fs_walk_entry"
    pasid: int
    iova: int
    level: int
    addr: int
    entry: int


@dataclass(slots=True, unsafe_hash=True)
class IotlbHitSource(TraceEvent):
    """After an IOTLB hit: ``changed`` is the first level whose entry no longer gives the
    translation the IOTLB entry was filled from (0: all still do), at ``addr``, which held
    ``filled`` at the fill and holds ``now``; ``levels`` entries were compared."""

    EVENT: ClassVar[str] = "vtd_iotlb_hit_source"
    sid: int
    pasid: int
    iova: int
    levels: int
    changed: int
    addr: int
    filled: int
    now: int


TYPED_EVENTS = (*TYPED_EVENTS, PrqDesc, FsWalkEntry, IotlbHitSource)
TYPED_BY_NAME: dict[str, type[TraceEvent]] = {c.EVENT: c for c in TYPED_EVENTS}
