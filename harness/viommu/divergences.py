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
    source: str  # where it is documented (shared/VTD_FACTS.md section)


DIVERGENCES: tuple[Divergence, ...] = (
    Divergence(
        "sm-fault-pp-rid-pasid", "10.0",
        "a fault of a request WITHOUT PASID in scalable mode is recorded with PP=1 and PV=RID_PASID",
        "PP is set only for requests with a PASID TLP prefix",
        "VTD_FACTS §10.7",
    ),
    Divergence(
        "iqercd-zero", "10.0",
        "after an invalid descriptor (FSTS.IQE) IQERCD reads 0: no IQEI error code",
        "IQERCD.IQEI records why (3 invalid type, 4 reserved field, ...)",
        "VTD_FACTS §6.4, §10.8",
    ),
    Divergence(
        "sm-legacy-fault-codes", "10.0",
        "scalable-mode root/context/second-stage faults carry the legacy codes (0x1-0xC)",
        "scalable mode has its own codes (0x38-0x48, 0x78-0x7C, 0x83, 0x86)",
        "VTD_FACTS §10.6",
    ),
    Divergence(
        "wait-sw-and-if", "10.0",
        "a wait descriptor with both SW and IF set aborts QEMU (never sent by the oracle)",
        "both completions happen",
        "VTD_FACTS §10.8",
    ),
    Divergence(
        "pasid-cache-noop", "10.0",
        "PASID-cache invalidation (0x7) is accepted as a no-op, no trace line, no reserved check",
        "invalidates PASID-cache entries; reserved fields checked",
        "VTD_FACTS §10.5",
    ),
)

BY_ID = {d.id: d for d in DIVERGENCES}
