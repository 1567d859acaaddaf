"""Where QEMU's VT-d emulation departs from the spec, named and kept OUT of the model.

The differential checks map each of these explicitly; each entry has a test in
tests/differential/ that shows the departure on the real QEMU, so the day QEMU
changes, the test says so.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Divergence:
    id: str
    qemu_versions: str
    what: str
    spec: str
    source: str  # where it is documented (docs/VTD_FACTS.md section)


DIVERGENCES: tuple[Divergence, ...] = (
    Divergence(
        "sm-fault-pp-rid-pasid", "10.0",
        "a fault of a request WITHOUT PASID in scalable mode is recorded with PP=1 and PV=RID_PASID",
        "PP is set only for requests with a PASID TLP prefix",
        "docs/VTD_FACTS.md §10.7",
    ),
    Divergence(
        "iqercd-zero", "10.0",
        "after an invalid descriptor (FSTS.IQE) IQERCD reads 0: no IQEI error code",
        "IQERCD.IQEI records why (3 invalid type, 4 reserved field, ...)",
        "docs/VTD_FACTS.md §6.4, §10.8",
    ),
    Divergence(
        "sm-legacy-fault-codes", "10.0",
        "scalable-mode root/context/second-stage faults carry the legacy codes (0x1-0xC)",
        "scalable mode has its own codes (0x38-0x48, 0x78-0x7C, 0x83, 0x86)",
        "docs/VTD_FACTS.md §10.6",
    ),
    Divergence(
        "wait-sw-and-if", "10.0",
        "a wait descriptor with both SW and IF set aborts QEMU (never sent by the oracle)",
        "both completions happen",
        "docs/VTD_FACTS.md §10.8",
    ),
    Divergence(
        "pasid-cache-noop", "10.0",
        "PASID-cache invalidation (0x7) is accepted as a no-op, no trace line, no reserved check",
        "invalidates PASID-cache entries; reserved fields checked",
        "docs/VTD_FACTS.md §10.5",
    ),
    Divergence(
        "wait-neither-sw-nor-if", "10.0",
        "a wait descriptor with neither SW nor IF (ordering only, FN or not) is IQE",
        "a valid descriptor: it completes with no status write and no interrupt",
        "docs/VTD_FACTS.md §6.4, §10.8",
    ),
    Divergence(
        "devtlb-pfsid-reserved", "10.0",
        "PFSID (qw0 15:12, 63:52) in device-TLB (0x3) and PASID-device-TLB (0x8) descriptors is IQE",
        "PFSID is a defined field (the SR-IOV PF source-id)",
        "docs/VTD_FACTS.md §6.3, §10.8",
    ),
    Divergence(
        "iqe-clear-no-resume", "10.0",
        "after FSTS.IQE is cleared nothing is fetched until software writes IQT again",
        "fetching resumes once software clears IQE",
        "docs/VTD_FACTS.md §6.4, §10.8",
    ),
    Divergence(
        "ss-root-read-error-context-invalid", "10.0",
        "an unreadable second-stage root table (SLPTPTR) is recorded as 0x3 (invalid context entry)",
        "LSL.1 0x7 (second-stage paging entry access error; SSL.4 0x7B in scalable mode)",
        "docs/VTD_FACTS.md §4.4 (QEMU SS walk: read fail at top -> 0x3)",
    ),
    Divergence(
        "legacy-interrupt-range-sm-code", "10.0",
        "with x-scalable-mode=on but RTADDR.TTM=legacy, an output address in 0xFEEx_xxxx is "
        "recorded as 0x87 (the code is chosen by the capability, not the latched mode)",
        "legacy mode reports LGN.4 0xE; SGN.8 0x87 belongs to scalable mode",
        "docs/VTD_FACTS.md §2.5 (QEMU 0x87 (SM) / 0xE (legacy))",
    ),
    Divergence(
        "fs1gp-not-enforced", "10.0",
        "with fs1gp=off (CAP.FS1GP=0) a first-stage PDPE with PS=1 still maps a 1 GiB page",
        "PS in a PDPE is reserved without FS1GP: fault 0x72",
        "docs/VTD_FACTS.md §4.1 (PS in PDPE only valid with FS1GP)",
    ),
    Divergence(
        "fs-dirty-skipped-when-accessed", "10.0",
        "a first-stage write walk does not set D in a leaf whose A flag is already set (the A/D "
        "update is skipped when any of A|D is set), so a page first read, then written, stays clean",
        "a successful write sets D in the leaf entry (A on every entry used)",
        "docs/VTD_FACTS.md §4.2 (A/D update)",
    ),
    Divergence(
        "pasid-entry-type-before-present", "10.2",
        "a PASID-table entry that is all zero (P=0) faults 0x5B: the entry's type (PGTT 000, "
        "reserved) is checked before its P bit",
        "P=0 is SPT.2, fault 0x59; the entry's other fields matter only when it is present",
        "tests/host_setup/test_svmval_sva_qtest.py (QEMU's vtd_get_pe_in_pasid_leaf_table)",
    ),
    Divergence(
        "pasid-fault-record-pp-clear", "10.2",
        "the fault of an ATS translation request tagged with a PASID is recorded with PP=0: "
        "the record does not say which PASID faulted",
        "PP=1 and PV=the request's PASID for a request with a PASID TLP prefix",
        "tests/host_setup/test_svmval_sva_qtest.py",
    ),
    Divergence(
        "sm-context-fields-unchecked", "10.0",
        "scalable-mode context DTE/PASIDE/PRE are not validated against ECAP.DT/PASID/PRS",
        "setting a field whose capability is absent is invalid programming: SCT.4 0x43",
        "docs/VTD_FACTS.md §10.6",
    ),
)

BY_ID = {d.id: d for d in DIVERGENCES}
