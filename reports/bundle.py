"""The result bundle: one directory per run, everything needed to judge it later.

Layout of a bundle directory:

    manifest.json    this module's Manifest (schema "svmval.bundle/1")
    workloads.json   the workloads' own results (schema "svmval.workloads/1")
    workloads-host.json  optional: the same workloads run on the host (role "workloads-host"),
                     for guest-vs-host bandwidth
    checks.json      CheckResult list (schema "svmval.checks/1")
    preflight.json   the host's preflight verdicts
    trace.log        QEMU's vtd_* trace (line numbers in findings refer to it)
    console.log      the guest serial console
    qemu.stderr, cmdline.txt
    junit.xml, report.html   rendered from the above by reports/

Writers add files and name them in `Manifest.files`; readers never guess names.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

BUNDLE_SCHEMA = "svmval.bundle/1"
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


@dataclass
class Manifest:
    run_id: str
    host: dict[str, Any]  # name, kind, address (no credentials)
    started: str  # ISO 8601 UTC
    finished: str = ""
    verdict: Verdict = Verdict.ERROR
    git: dict[str, Any] = field(default_factory=dict)  # rev, dirty
    qemu: dict[str, Any] = field(default_factory=dict)  # binary, version, iommu properties
    guest: dict[str, Any] = field(default_factory=dict)  # kernel, image digest, pocl, pyopencl
    device: dict[str, Any] = field(default_factory=dict)  # OpenCL device + SVM caps
    counts: dict[str, int] = field(default_factory=dict)  # pass/fail/skip/error totals
    durations: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    files: dict[str, str] = field(default_factory=dict)  # role -> path relative to the bundle
    error: str = ""  # why the run could not complete, if it could not
    schema: str = BUNDLE_SCHEMA

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], where: Path) -> Manifest:
        if d.get("schema") != BUNDLE_SCHEMA:
            raise ConfigError(
                f"{where}: schema {d.get('schema')!r} is not {BUNDLE_SCHEMA!r}; "
                f"re-run with this svmval version or use the matching report tool"
            )
        d = dict(d)
        d["verdict"] = Verdict(d["verdict"])
        return cls(**d)


# Secrets never leave the run: anything that looks like a key or a password is masked
# before a file is written into the bundle.
_SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r"(?i)\b(password|passwd|token|secret|api[_-]?key)\b(\s*[=:]\s*)(\S+)"),
]


def mask_secrets(text: str) -> str:
    text = _SECRET_PATTERNS[0].sub("[private key masked]", text)
    return _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}[masked]", text)


# A key block with no END line (a console cut off mid-key) still must not leak.
_UNTERMINATED_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*\Z", re.S)


def mask_secrets_keep_lines(text: str) -> str:
    """mask_secrets, but a masked key keeps its line count, so findings' line numbers
    into the file still point at the same lines after masking. Also masks a key
    block that never ends."""

    def blank(m: re.Match[str]) -> str:
        # One marker per line: a reader of an excerpt sees why the lines are empty.
        return "\n".join(["[private key masked]"] * (m.group(0).count("\n") + 1))

    text = _SECRET_PATTERNS[0].sub(blank, text)
    text = _UNTERMINATED_KEY.sub(blank, text)
    return _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}[masked]", text)


class Bundle:
    """A bundle directory being written or read."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest

    @classmethod
    def create(cls, path: Path, manifest: Manifest) -> Bundle:
        path.mkdir(parents=True, exist_ok=True)
        bundle = cls(path, manifest)
        bundle.save()
        return bundle

    @classmethod
    def open(cls, path: Path) -> Bundle:
        mf = path / "manifest.json"
        if not mf.exists():
            raise ConfigError(
                f"{path} is not a result bundle (no manifest.json); pass a run directory"
            )
        return cls(path, Manifest.from_json(json.loads(mf.read_text()), mf))

    def save(self) -> None:
        (self.path / "manifest.json").write_text(
            json.dumps(self.manifest.to_json(), indent=2) + "\n"
        )

    def add_text(self, role: str, name: str, text: str) -> Path:
        target = self.path / name
        target.write_text(mask_secrets(text))
        self.manifest.files[role] = name
        self.save()
        return target

    def add_json(self, role: str, name: str, data: Any) -> Path:
        return self.add_text(role, name, json.dumps(data, indent=2) + "\n")

    def add_file(
        self, role: str, source: Path, name: str | None = None, *, mask: bool = True
    ) -> Path:
        """Copy a file in; text is masked on the way unless the caller knows it holds
        no secrets (a QEMU trace: large, and only numbers)."""
        name = name or source.name
        data = source.read_bytes()
        if mask:
            try:
                return self.add_text(role, name, data.decode())
            except UnicodeDecodeError:
                pass
        (self.path / name).write_bytes(data)
        self.manifest.files[role] = name
        self.save()
        return self.path / name

    def file(self, role: str) -> Path | None:
        name = self.manifest.files.get(role)
        return self.path / name if name else None

    def checks(self) -> list[CheckResult]:
        p = self.file("checks")
        if p is None or not p.exists():
            return []
        data = json.loads(p.read_text())
        return [CheckResult.from_json(c) for c in data["checks"]]

    def write_checks(self, checks: list[CheckResult]) -> Path:
        return self.add_json(
            "checks",
            "checks.json",
            {"schema": CHECKS_SCHEMA, "checks": [c.to_json() for c in checks]},
        )

    def workloads(self) -> dict[str, Any] | None:
        p = self.file("workloads")
        return json.loads(p.read_text()) if p is not None and p.exists() else None
