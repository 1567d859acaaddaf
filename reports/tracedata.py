"""What the report needs from trace.log: the raw QI descriptors and where they sit.

Read with the one trace reader (harness/trace) and the formats of the QEMU that wrote
the trace: the bundle keeps them as `vm/trace-formats` (older bundles: the installed
QEMU's trace-events-all). A line that does not parse is an error naming file and line,
shown where the plot would be; it is never skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.trace.events import InvDesc
from harness.trace.parser import TraceParseError, iter_events


@dataclass(frozen=True)
class QiTrace:
    descriptors: tuple[InvDesc, ...]  # vtd_inv_desc events, with .line and .timestamp
    total_lines: int


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def read_qi(path: Path, formats: Path | None = None) -> QiTrace:
    """Raises TraceParseError (file and line) for a vtd_inv_desc line that does not parse."""
    descs = tuple(ev for ev in iter_events(path, names=["vtd_inv_desc"], strict=True, trace_events=formats)
                  if isinstance(ev, InvDesc))
    return QiTrace(descs, _count_lines(path))


__all__ = ["QiTrace", "TraceParseError", "read_qi"]
