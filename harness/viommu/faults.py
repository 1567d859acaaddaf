"""VT-d fault reasons and the fault record a translation fault produces.

``FaultReason`` values are the spec's fault-reason codes (FRCD.FR): legacy
0x1-0xE, interrupt remapping 0x20-0x29, scalable mode 0x30-0x91 (docs/VTD_FACTS.md §8).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class FaultReason(IntEnum):
    """Fault-reason code; ``.description`` gives the meaning, ``.mnemonic`` the spec tag."""

    # ---- legacy (root/context/second-stage) -------------------------------------------
    ROOT_NOT_PRESENT = 0x1
    CONTEXT_NOT_PRESENT = 0x2
    CONTEXT_INVALID = 0x3
    ADDRESS_BEYOND_MGAW = 0x4
    WRITE_DENIED = 0x5
    READ_DENIED = 0x6
    SS_ENTRY_ACCESS = 0x7
    ROOT_ACCESS = 0x8
    CONTEXT_ACCESS = 0x9
    ROOT_RESERVED = 0xA
    CONTEXT_RESERVED = 0xB
    SS_ENTRY_RESERVED = 0xC
    TT_BLOCKED = 0xD
    INTERRUPT_RANGE = 0xE
    # ---- interrupt remapping ------------------------------------------------------------
    IR_REQUEST_RESERVED = 0x20
    IR_INDEX_BEYOND = 0x21
    IR_IRTE_NOT_PRESENT = 0x22
    IR_IRT_ACCESS = 0x23
    IR_IRTE_RESERVED = 0x24
    IR_COMPAT_BLOCKED = 0x25
    IR_SID_CHECK = 0x26
    IR_PID_READ = 0x27
    IR_PID_RESERVED = 0x28
    IR_NO_PASID_INVALID = 0x29
    # ---- scalable mode: root-table address -----------------------------------------------
    SM_RTA_INVALID = 0x30
    SM_TTM_LEGACY_PASID = 0x31
    SM_TTM_LEGACY_PAGE_REQUEST = 0x32
    SM_RTA_4 = 0x33
    # ---- scalable mode: root / context -----------------------------------------------------
    SM_ROOT_ACCESS = 0x38
    SM_ROOT_NOT_PRESENT = 0x39
    SM_ROOT_RESERVED = 0x3A
    SM_CONTEXT_ACCESS = 0x40
    SM_CONTEXT_NOT_PRESENT = 0x41
    SM_CONTEXT_RESERVED = 0x42
    SM_CONTEXT_INVALID = 0x43
    SM_DTE_CLEAR = 0x44
    SM_PASIDE_CLEAR = 0x45
    SM_PASID_TOO_LARGE = 0x46
    SM_PRE_CLEAR = 0x47
    SM_RID_PASID_ERROR = 0x48
    # ---- scalable mode: PASID directory / table ----------------------------------------------
    SM_PASID_DIR_ACCESS = 0x50
    SM_PASID_DIR_NOT_PRESENT = 0x51
    SM_PASID_DIR_RESERVED = 0x52
    SM_PASID_ENTRY_ACCESS = 0x58
    SM_PASID_ENTRY_NOT_PRESENT = 0x59
    SM_PASID_ENTRY_RESERVED = 0x5A
    SM_PASID_ENTRY_INVALID = 0x5B
    SM_ERE_CLEAR = 0x5C
    SM_SRE_CLEAR = 0x5D
    # ---- scalable mode: first stage ------------------------------------------------------------
    FS_ENTRY_ACCESS = 0x70
    FS_ENTRY_NOT_PRESENT = 0x71
    FS_ENTRY_RESERVED = 0x72
    FS_ROOT_ACCESS = 0x73
    FS_NESTED_BEYOND_MGAW = 0x74
    FS_NESTED_ROOT_READ_DENIED = 0x75
    FS_NESTED_ENTRY_READ_DENIED = 0x76
    FS_NESTED_AD_WRITE_DENIED = 0x77
    # ---- scalable mode: second stage -----------------------------------------------------------
    SS_SM_ENTRY_ACCESS = 0x78
    SS_SM_ENTRY_NOT_PRESENT = 0x79
    SS_SM_ENTRY_RESERVED = 0x7A
    SS_SM_INVALID_SLPTPTR = 0x7B
    SS_AD_NO_SNOOP = 0x7C
    SS_SM_7D = 0x7D
    # ---- scalable mode: general ----------------------------------------------------------------
    SM_NOT_CANONICAL = 0x80
    SM_USER_DENIED = 0x81
    SM_EXECUTE_DENIED = 0x82
    SM_BEYOND_HW_MAX = 0x83
    SM_SS_ADDRESS_BEYOND = 0x84
    SM_WRITE_DENIED = 0x85
    SM_READ_DENIED = 0x86
    SM_INTERRUPT_RANGE = 0x87
    SM_88 = 0x88
    SM_89 = 0x89
    FS_AD_NO_SNOOP = 0x90
    FS_AD_UPDATE_FAILED = 0x91

    @property
    def description(self) -> str:
        return _INFO[self][1]

    @property
    def mnemonic(self) -> str:
        return _INFO[self][0]

    @property
    def qualified(self) -> bool:
        """A qualified fault is suppressed (not recorded) when FPD=1 applies."""
        return self not in NON_QUALIFIED

    @property
    def scalable(self) -> bool:
        return self >= 0x30


_INFO: dict[FaultReason, tuple[str, str]] = {
    FaultReason.ROOT_NOT_PRESENT: ("LRT.2", "root entry present bit clear"),
    FaultReason.CONTEXT_NOT_PRESENT: ("LCT.2", "context entry present bit clear"),
    FaultReason.CONTEXT_INVALID: ("LCT.4", "invalid context entry programming (AW, TT)"),
    FaultReason.ADDRESS_BEYOND_MGAW: ("LGN.1", "input address beyond MGAW/AGAW"),
    FaultReason.WRITE_DENIED: ("LGN.2", "write not permitted"),
    FaultReason.READ_DENIED: ("LGN.3", "read not permitted"),
    FaultReason.SS_ENTRY_ACCESS: ("LSL.1", "second-stage paging entry access error"),
    FaultReason.ROOT_ACCESS: ("LRT.1", "root table access error"),
    FaultReason.CONTEXT_ACCESS: ("LCT.1", "context table access error"),
    FaultReason.ROOT_RESERVED: ("LRT.3", "reserved bit set in root entry"),
    FaultReason.CONTEXT_RESERVED: ("LCT.3", "reserved bit set in context entry"),
    FaultReason.SS_ENTRY_RESERVED: ("LSL.2", "reserved bit set in second-stage entry"),
    FaultReason.TT_BLOCKED: ("LCT.5", "translation type blocks the request"),
    FaultReason.INTERRUPT_RANGE: ("LGN.4", "output address in interrupt range"),
    FaultReason.IR_REQUEST_RESERVED: ("IR", "interrupt request reserved bits"),
    FaultReason.IR_INDEX_BEYOND: ("IR", "interrupt index beyond IRT size"),
    FaultReason.IR_IRTE_NOT_PRESENT: ("IR", "IRTE present bit clear"),
    FaultReason.IR_IRT_ACCESS: ("IR", "interrupt remapping table access error"),
    FaultReason.IR_IRTE_RESERVED: ("IR", "IRTE reserved bits"),
    FaultReason.IR_COMPAT_BLOCKED: ("IR", "compatibility-format interrupt blocked"),
    FaultReason.IR_SID_CHECK: ("IR", "IRTE source-id check failed"),
    FaultReason.IR_PID_READ: ("IR", "posted-interrupt descriptor read error"),
    FaultReason.IR_PID_RESERVED: ("IR", "posted-interrupt descriptor reserved bits"),
    FaultReason.IR_NO_PASID_INVALID: ("IR", "untranslated interrupt without PASID invalid"),
    FaultReason.SM_RTA_INVALID: ("RTA.1", "invalid root-table address or TTM"),
    FaultReason.SM_TTM_LEGACY_PASID: ("RTA.2", "TTM=00 (legacy) for a request with PASID"),
    FaultReason.SM_TTM_LEGACY_PAGE_REQUEST: ("RTA.3", "TTM=00 (legacy) for a page request"),
    FaultReason.SM_RTA_4: ("RTA.4", "root-table address fault 4 (meaning not in sources)"),
    FaultReason.SM_ROOT_ACCESS: ("SRT.1", "scalable-mode root entry access error"),
    FaultReason.SM_ROOT_NOT_PRESENT: ("SRT.2", "scalable-mode root entry LP/UP clear"),
    FaultReason.SM_ROOT_RESERVED: ("SRT.3", "scalable-mode root entry reserved bits"),
    FaultReason.SM_CONTEXT_ACCESS: ("SCT.1", "scalable-mode context entry access error"),
    FaultReason.SM_CONTEXT_NOT_PRESENT: ("SCT.2", "scalable-mode context entry P clear"),
    FaultReason.SM_CONTEXT_RESERVED: ("SCT.3", "scalable-mode context entry reserved bits"),
    FaultReason.SM_CONTEXT_INVALID: ("SCT.4", "invalid scalable-mode context programming"),
    FaultReason.SM_DTE_CLEAR: ("SCT.5", "DTE clear for a translation request"),
    FaultReason.SM_PASIDE_CLEAR: ("SCT.6", "PASIDE clear for a request with PASID"),
    FaultReason.SM_PASID_TOO_LARGE: ("SCT.7", "PASID beyond what PDTS allows"),
    FaultReason.SM_PRE_CLEAR: ("SCT.8", "PRE clear for a page request"),
    FaultReason.SM_RID_PASID_ERROR: ("SCT.9", "RID_PASID field error"),
    FaultReason.SM_PASID_DIR_ACCESS: ("SPD.1", "PASID directory entry access error"),
    FaultReason.SM_PASID_DIR_NOT_PRESENT: ("SPD.2", "PASID directory entry P clear"),
    FaultReason.SM_PASID_DIR_RESERVED: ("SPD.3", "PASID directory entry reserved bits"),
    FaultReason.SM_PASID_ENTRY_ACCESS: ("SPT.1", "PASID table entry access error"),
    FaultReason.SM_PASID_ENTRY_NOT_PRESENT: ("SPT.2", "PASID table entry P clear"),
    FaultReason.SM_PASID_ENTRY_RESERVED: ("SPT.3", "PASID table entry reserved bits"),
    FaultReason.SM_PASID_ENTRY_INVALID: ("SPT.4", "invalid PASID entry (PGTT, AW, FLPM)"),
    FaultReason.SM_ERE_CLEAR: ("SPT.5", "ERE clear for an execute request"),
    FaultReason.SM_SRE_CLEAR: ("SPT.6", "SRE clear for a supervisor request"),
    FaultReason.FS_ENTRY_ACCESS: ("SFL.1", "first-stage paging entry access error"),
    FaultReason.FS_ENTRY_NOT_PRESENT: ("SFL.2", "first-stage entry P clear"),
    FaultReason.FS_ENTRY_RESERVED: ("SFL.3", "first-stage entry reserved bits"),
    FaultReason.FS_ROOT_ACCESS: ("SFL.4", "first-stage root table (FSPTPTR) access error"),
    FaultReason.FS_NESTED_BEYOND_MGAW: ("SFL.5", "nested: first-stage structure GPA beyond MGAW"),
    FaultReason.FS_NESTED_ROOT_READ_DENIED: ("SFL.6", "nested: SS denies read of the FS root"),
    FaultReason.FS_NESTED_ENTRY_READ_DENIED: ("SFL.7", "nested: SS denies read of an FS entry"),
    FaultReason.FS_NESTED_AD_WRITE_DENIED: ("SFL.8", "nested: SS denies the FS A/D update write"),
    FaultReason.SS_SM_ENTRY_ACCESS: ("SSL.1", "second-stage entry access error"),
    FaultReason.SS_SM_ENTRY_NOT_PRESENT: (
        "SSL.2", "second-stage entry R=W=0 (read/write permission)"),
    FaultReason.SS_SM_ENTRY_RESERVED: ("SSL.3", "second-stage entry reserved bits"),
    FaultReason.SS_SM_INVALID_SLPTPTR: ("SSL.4", "second-stage root table (SSPTPTR) access error"),
    FaultReason.SS_AD_NO_SNOOP: ("SSL.5", "second-stage A/D update needed on a no-snoop walk"),
    FaultReason.SS_SM_7D: ("SSL.6", "second-stage fault 6 (meaning not in sources)"),
    FaultReason.SM_NOT_CANONICAL: ("SGN.1", "first-stage input address not canonical"),
    FaultReason.SM_USER_DENIED: ("SGN.2", "U/S clear on a user-privilege first-stage access"),
    FaultReason.SM_EXECUTE_DENIED: ("SGN.3", "no execute permission"),
    FaultReason.SM_BEYOND_HW_MAX: ("SGN.4", "input address beyond the hardware maximum"),
    FaultReason.SM_SS_ADDRESS_BEYOND: ("SGN.5", "second-stage entry address beyond the maximum"),
    FaultReason.SM_WRITE_DENIED: ("SGN.6", "no write permission"),
    FaultReason.SM_READ_DENIED: ("SGN.7", "no read permission"),
    FaultReason.SM_INTERRUPT_RANGE: ("SGN.8", "output address in interrupt range"),
    FaultReason.SM_88: ("SGN.9", "general fault 9 (meaning not in sources)"),
    FaultReason.SM_89: ("SGN.10", "general fault 10 (meaning not in sources)"),
    FaultReason.FS_AD_NO_SNOOP: ("SFL.9", "first-stage A/D update needed on a no-snoop walk"),
    FaultReason.FS_AD_UPDATE_FAILED: ("SFL.10", "first-stage A/D update failed"),
}

# Faults whose governing FPD bit cannot be trusted (the entry that carries it could
# not be read or is malformed) are always recorded.
NON_QUALIFIED: frozenset[FaultReason] = frozenset(
    {
        FaultReason.ROOT_NOT_PRESENT,
        FaultReason.ROOT_ACCESS,
        FaultReason.CONTEXT_ACCESS,
        FaultReason.ROOT_RESERVED,
        FaultReason.CONTEXT_RESERVED,
        FaultReason.SM_RTA_INVALID,
        FaultReason.SM_TTM_LEGACY_PASID,
        FaultReason.SM_TTM_LEGACY_PAGE_REQUEST,
        FaultReason.SM_RTA_4,
        FaultReason.SM_ROOT_ACCESS,
        FaultReason.SM_ROOT_NOT_PRESENT,
        FaultReason.SM_ROOT_RESERVED,
        FaultReason.SM_CONTEXT_ACCESS,
        FaultReason.SM_CONTEXT_RESERVED,
        FaultReason.SM_PASID_DIR_ACCESS,
        FaultReason.SM_PASID_ENTRY_ACCESS,
    }
)


class RequestType(IntEnum):
    """FRCD request type, encoded as (T1 << 1) | T2 (docs/VTD_FACTS.md §1.8)."""

    WRITE = 0b00
    PAGE_REQUEST = 0b01
    READ = 0b10
    ATOMIC = 0b11

    @property
    def t1(self) -> int:
        return self >> 1

    @property
    def t2(self) -> int:
        return self & 1


class WalkFault(Exception):
    """Raised inside walkers; carries the fault reason and where it happened."""

    def __init__(self, reason: FaultReason, level: int = 0, stage: str = "") -> None:
        super().__init__(f"{reason.name} ({reason.value:#x}) at level {level} {stage}".strip())
        self.reason = reason
        self.level = level
        self.stage = stage
        # FPD carried by the (readable, well-formed) entry that reported the fault.
        self.fpd = False

    def with_fpd(self, fpd: bool) -> WalkFault:
        self.fpd = fpd
        return self


@dataclass(frozen=True, slots=True)
class Fault:
    """What one fault record (FRCD) carries."""

    sid: int
    addr: int
    fr: FaultReason
    pasid: int | None = None
    request_type: RequestType = RequestType.READ
    priv: bool = False
    exe: bool = False
    at: int = 0

    @property
    def pp(self) -> bool:
        """PASID present."""
        return self.pasid is not None

    @property
    def fi(self) -> int:
        """Fault info: the faulting page address (bits 63:12)."""
        return self.addr & ~0xFFF & 0xFFFF_FFFF_FFFF_FFFF

    def encode(self) -> int:
        """The 128-bit FRCD value (F set)."""
        v = self.fi
        v |= (self.sid & 0xFFFF) << 64
        v |= self.request_type.t2 << 92
        v |= int(self.priv) << 93
        v |= int(self.exe) << 94
        v |= int(self.pp) << 95
        v |= (int(self.fr) & 0xFF) << 96
        v |= ((self.pasid or 0) & 0xFFFFF) << 104
        v |= (self.at & 3) << 124
        v |= self.request_type.t1 << 126
        v |= 1 << 127
        return v

    @classmethod
    def decode(cls, value: int) -> Fault:
        """Decode a 128-bit FRCD value (fault reasons outside the enum raise ValueError)."""
        pp = (value >> 95) & 1
        return cls(
            sid=(value >> 64) & 0xFFFF,
            addr=value & 0xFFFF_FFFF_FFFF_F000,
            fr=FaultReason((value >> 96) & 0xFF),
            pasid=((value >> 104) & 0xFFFFF) if pp else None,
            request_type=RequestType((((value >> 126) & 1) << 1) | ((value >> 92) & 1)),
            priv=bool((value >> 93) & 1),
            exe=bool((value >> 94) & 1),
            at=(value >> 124) & 3,
        )
