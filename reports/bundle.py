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
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.results import (
    CHECKS_SCHEMA,
    DATA_INV_TO_USE,
    DATA_INV_TO_USE_UNIT,
    DATA_PRQ_LATENCY_US,
    CheckResult,
    Finding,
    Traffic,
    Verdict,
)

BUNDLE_SCHEMA = "svmval.bundle/1"

__all__ = ["BUNDLE_SCHEMA", "CHECKS_SCHEMA", "DATA_INV_TO_USE", "DATA_INV_TO_USE_UNIT", "DATA_PRQ_LATENCY_US",
           "Bundle", "CheckResult", "Finding", "Manifest", "Traffic", "Verdict", "mask_secrets"]
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
    # What the run was doing last ("workload svm_migrate", "final checks", "done"): where
    # a run that died stopped; everything finished before it is already in the bundle.
    stage: str = ""
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
        d.setdefault("stage", "")
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
