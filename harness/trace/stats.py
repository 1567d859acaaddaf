"""`svmval trace stats FILE`: a quick look at a vtd_* trace, built on the one reader."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .events import BadLine, DmarFault, DmarTranslate, FrrNew, InvDesc, TraceEvent
from .parser import iter_events

# Events only QEMU 11's intel_iommu emits (its PASID-cache emulation).
QEMU11_ONLY = frozenset({"vtd_pasid_cache_reset", "vtd_inv_desc_pasid_cache_gsi", "vtd_inv_desc_pasid_cache_dsi",
                         "vtd_inv_desc_pasid_cache_psi", "vtd_pasid_cache_devsi"})


@dataclass
class TraceStats:
    path: str
    lines: int = 0
    events: Counter[str] = field(default_factory=Counter)
    descriptors: Counter[str] = field(default_factory=Counter)  # vtd_inv_desc by QEMU's type word
    translations: int = 0
    faults: int = 0
    stamps: Counter[str] = field(default_factory=Counter)  # "iso", "pid@seconds", "none"
    bad: list[BadLine] = field(default_factory=list)

    def feed(self, ev: TraceEvent) -> None:
        self.lines += 1
        if isinstance(ev, BadLine):
            self.bad.append(ev)
            return
        self.events[ev.name] += 1
        self.stamps["none" if ev.timestamp is None else "pid@seconds" if ev.pid is not None else "iso"] += 1
        if isinstance(ev, InvDesc):
            self.descriptors[ev.type] += 1
        elif isinstance(ev, DmarTranslate):
            self.translations += 1
        elif isinstance(ev, DmarFault | FrrNew):
            self.faults += 1

    @property
    def qemu_guess(self) -> str:
        """What the trace says of the QEMU that wrote it (its stamps and its events)."""
        if self.stamps["iso"] or QEMU11_ONLY & set(self.events):
            return ">= 11 (ISO 8601 timestamps or PASID-cache events)"
        if self.stamps["pid@seconds"]:
            return "<= 10.x (PID@SECONDS timestamps)"
        return "unknown (no timestamps: -msg timestamp=on was off)"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "lines": self.lines, "qemu": self.qemu_guess,
            "events": dict(self.events.most_common()), "descriptors": dict(self.descriptors.most_common()),
            "translations": self.translations, "faults": self.faults,
            "bad_lines": [{"line": b.line, "reason": b.reason, "text": b.text[:200]} for b in self.bad],
        }


def trace_stats(path: Path, formats: Path | None = None) -> TraceStats:
    stats = TraceStats(str(path))
    for ev in iter_events(path, trace_events=formats):
        stats.feed(ev)
    return stats
