"""What a check or a run concludes, defined once for every layer that uses it.

The bottom layer: checks (harness/checks) produce these, reports (reports/) render
them, the run (harness/run.py) collects them. It imports nothing of svmval's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

CHECKS_SCHEMA = "svmval.checks/1"

# Optional series a check may put into CheckResult.data for the report's plots. A key
# that is absent means "not measured": the report says so instead of drawing a chart.
DATA_INV_TO_USE = "inv_to_use"  # list[float]: invalidation -> next use of that address
DATA_INV_TO_USE_UNIT = "inv_to_use_unit"  # str: unit of the above ("trace lines", "us")
DATA_PRQ_LATENCY_US = "prq_latency_us"  # list[float]: page request -> response, microseconds


class Verdict(str, Enum):  # noqa: UP042 - like harness/inventory.py; str() stays "Verdict.PASS"
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"  # the check could not run: environment, not the system under test


class Traffic(str, Enum):  # noqa: UP042 - as Verdict
    """Whether a check judged traffic the system really produced or traffic the
    model generated (e.g. page requests on a QEMU without PRQ emulation)."""

    REAL = "real"
    MODELLED = "modelled"


@dataclass(frozen=True)
class Finding:
    message: str
    trace_lines: tuple[int, ...] = ()  # 1-based line numbers in trace.log
    console_lines: tuple[int, ...] = ()  # 1-based line numbers in console.log


@dataclass(frozen=True)
class CheckResult:
    name: str  # e.g. "qi-completeness", "translation", "prq"
    verdict: Verdict
    traffic: Traffic
    summary: str
    workload: str | None = None  # None: the check covers the whole run
    counts: dict[str, int] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    duration_s: float = 0.0
    # Optional JSON-able series for plots (keys: the DATA_* names above). Not counts:
    # counts are totals; data holds distributions too large to read as a table.
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        d["traffic"] = self.traffic.value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CheckResult:
        return cls(
            name=d["name"],
            verdict=Verdict(d["verdict"]),
            traffic=Traffic(d["traffic"]),
            summary=d["summary"],
            workload=d.get("workload"),
            counts=dict(d.get("counts", {})),
            findings=tuple(
                Finding(
                    message=f["message"],
                    trace_lines=tuple(f.get("trace_lines", ())),
                    console_lines=tuple(f.get("console_lines", ())),
                )
                for f in d.get("findings", ())
            ),
            duration_s=float(d.get("duration_s", 0.0)),
            data=dict(d.get("data", {})),
        )
