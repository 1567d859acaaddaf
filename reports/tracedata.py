"""The little the report needs from trace.log: the raw QI descriptors and where
they sit. harness/trace/ is the full parser; this stays a single regex on purpose,
so a report can always be drawn from a bundle, even one the current parser rejects."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# QEMU 10.0: `vtd_inv_desc invalidate desc type p-iotlb high 0x0 low 0x20026`, with
# `PID@SECONDS:` in front under `-msg timestamp=on`. Older/newer wordings of the
# message ("invalidation type ...") differ before `type`, hence the lazy gap.
_INV_DESC = re.compile(
    r"^(?:\d+@(?P<ts>\d+\.\d+):)?vtd_inv_desc .*?\btype (?P<type>\S+) "
    r"high 0x(?P<hi>[0-9a-fA-F]+) low 0x(?P<lo>[0-9a-fA-F]+)"
)


@dataclass(frozen=True)
class InvDesc:
    line: int  # 1-based line in trace.log
    type: str  # QEMU's name: wait, iotlb, p-iotlb, context-cache, iec, device-iotlb, ...
    high: int
    low: int
    timestamp: float | None  # seconds, when the trace has timestamps


@dataclass(frozen=True)
class QiTrace:
    descriptors: tuple[InvDesc, ...]
    total_lines: int


def read_qi(path: Path) -> QiTrace:
    descs = []
    total = 0
    # Split on \n only, like excerpts.py, so line numbers agree with the findings'.
    with path.open(errors="replace", newline="\n") as fh:
        for total, line in enumerate(fh, 1):  # noqa: B007 - total is the count after the loop
            if "vtd_inv_desc " not in line[:64]:
                continue  # cheap reject: most of a trace is interrupt remapping
            m = _INV_DESC.match(line)
            if m:
                ts = m.group("ts")
                descs.append(InvDesc(total, m.group("type"), int(m.group("hi"), 16),
                                     int(m.group("lo"), 16), float(ts) if ts else None))
    return QiTrace(tuple(descs), total)
