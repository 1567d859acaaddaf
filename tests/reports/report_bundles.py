"""Result bundles for the report tests (fixtures re-exported by conftest.py), built
from a real QEMU 10.0.2 vtd_* trace and guest console (tests/reports/fixtures/, made
by capture.sh there).

Findings point at real lines of that trace, found by content here, never by
hard-coded numbers, so the tests keep meaning the same thing if the fixture is
re-captured.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.gitinfo import git_revision
from reports.bundle import (
    CHECKS_SCHEMA,
    DATA_INV_TO_USE,
    DATA_INV_TO_USE_UNIT,
    DATA_PRQ_LATENCY_US,
    Bundle,
    CheckResult,
    Finding,
    Manifest,
    Traffic,
    Verdict,
)

FIXTURES = Path(__file__).parent / "fixtures"
QEMU_VERSION = "10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"

# Secrets planted into console.log: none of these may reach report.html or junit.xml.
PASSWORD = "hunter2-do-not-leak"
KEY_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDq-do-not-leak"
TOKEN = "tok-9f8e7d-do-not-leak"
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    f"{KEY_BODY}\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def fixture_text(name: str) -> str:
    return gzip.decompress((FIXTURES / name).read_bytes()).decode()


@dataclass(frozen=True)
class TraceFacts:
    """Line numbers (1-based) of real events in the fixture trace."""

    lines: list[str]
    piotlb: list[int]  # raw `type p-iotlb` descriptors
    translate: list[int]  # vtd_dmar_translate

    def next_translate(self, after: int) -> int:
        return next(n for n in self.translate if n > after)


@pytest.fixture(scope="session")
def trace_text() -> str:
    return fixture_text("vtd-boot-trace.log.gz")


@pytest.fixture(scope="session")
def trace_facts(trace_text: str) -> TraceFacts:
    lines = trace_text.split("\n")[:-1]
    return TraceFacts(
        lines,
        [i for i, t in enumerate(lines, 1) if "vtd_inv_desc " in t and "type p-iotlb" in t],
        [i for i, t in enumerate(lines, 1) if ":vtd_dmar_translate " in t],
    )


@dataclass(frozen=True)
class ConsoleFacts:
    text: str  # with the secrets planted
    lines: list[str]
    workload_line: int  # "svmval: workload saxpy-fine pass", after the planted key
    qi_line: int  # "DMAR: dmar0: Using Queued invalidation", beside the password


@pytest.fixture(scope="session")
def console_facts() -> ConsoleFacts:
    lines = fixture_text("vtd-boot-console.log.gz").split("\n")[:-1]
    qi = next(i for i, t in enumerate(lines) if "Using Queued invalidation" in t)
    # The password sits right after the QI line (inside its excerpt window); the
    # key sits just before the workload line, so a mask that drops lines would shift
    # the line the finding points at.
    lines.insert(qi + 1, f"login: root password={PASSWORD}")
    wl = next(i for i, t in enumerate(lines) if "svmval: workload saxpy-fine pass" in t)
    lines[wl:wl] = PRIVATE_KEY.rstrip("\n").split("\n")
    wl += PRIVATE_KEY.count("\n")
    return ConsoleFacts("\n".join(lines) + "\n", lines, wl + 1, qi + 1)


def _workload(name: str, verdict: str, reason: str, bw: dict[str, float] | None,
              timings: dict[str, float], needs: list[str] | None = None) -> dict[str, object]:
    return {
        "name": name, "verdict": verdict, "reason": reason, "needs": needs or [],
        "timings": timings, "bandwidth": bw,
        "pages": [{"gva": "0x7f3a1c000000", "size": 4096, "gpa": None, "touched_by": "device"}],
        "pid": 412,
    }


def workloads_doc(*, host: bool = False, scale: float = 1.0) -> dict[str, object]:
    """A workloads.json following docs/ARCHITECTURE.md (the workloads runner is not
    in the tree yet; test_report_real_workloads uses it once it is)."""
    bw = 6.0 if host else 1.0
    return {
        "schema": "svmval.workloads/1",
        "host": {"hostname": "host" if host else "guest", "python": "3.11.2"},
        "device": {"name": "pthread-haswell-QEMU TCG CPU",
                   "svm_caps": ["coarse", "fine-buffer", "atomics"]},
        "results": [
            _workload("saxpy-coarse", "pass", "", {"coarse": 1.8 * bw * scale},
                      {"build": 10.1 * scale, "run": 0.5 * scale}),
            _workload("fine-buffer-atomics", "fail",
                      f"device read a stale value after the host's atomic store token={TOKEN}",
                      {"fine-buffer": 0.9 * bw}, {"build": 9.7, "run": 0.8}),
            _workload("fine-system", "skip",
                      "device lacks CL_DEVICE_SVM_FINE_GRAIN_SYSTEM", None, {},
                      needs=["fine-grain-system"]),
        ],
    }


def checks_for(tf: TraceFacts, cf: ConsoleFacts, *, plots_data: bool = True) -> list[CheckResult]:
    first = tf.piotlb[0]
    distances = [tf.next_translate(n) - n for n in tf.piotlb if n < tf.translate[-1]]
    return [
        CheckResult(
            "qi-completeness", Verdict.FAIL, Traffic.REAL,
            f"{len(tf.piotlb)} PASID-IOTLB invalidations; 1 finding (planted by the test)",
            counts={"descriptors": len(tf.piotlb), "missing": 1},
            findings=(
                Finding(f"planted: p-iotlb invalidation at trace line {first} judged late "
                        f"against the translation at line {tf.next_translate(first)}",
                        trace_lines=(first, tf.next_translate(first))),
                Finding("planted: reference past the end of the trace", trace_lines=(999999,)),
            ),
            duration_s=0.42,
            data={DATA_INV_TO_USE: distances, DATA_INV_TO_USE_UNIT: "trace lines"}
            if plots_data else {},
        ),
        CheckResult("translation", Verdict.PASS, Traffic.REAL, "all GVA->GPA->HPA walks agree",
                    workload="saxpy-coarse", counts={"passed": 12, "failed": 0}, duration_s=0.2),
        CheckResult(
            "translation", Verdict.FAIL, Traffic.REAL, "1 of 9 translations disagree",
            workload="fine-buffer-atomics", counts={"passed": 8, "failed": 1},
            findings=(Finding("planted: model and QEMU disagree on this translation; "
                              f"the guest said the workload passed, password={PASSWORD}",
                              trace_lines=(tf.translate[5],), console_lines=(cf.workload_line,)),),
            duration_s=0.3,
        ),
        CheckResult("prq", Verdict.PASS, Traffic.MODELLED,
                    "page requests generated by the model (QEMU 10.0 has no PRQ)",
                    workload="saxpy-coarse", counts={"page_requests": 4},
                    data={DATA_PRQ_LATENCY_US: [12.0, 15.5, 11.2, 30.1]} if plots_data else {}),
        CheckResult("prq", Verdict.SKIP, Traffic.MODELLED, "workload skipped",
                    workload="fine-system"),
        CheckResult("boot", Verdict.ERROR, Traffic.REAL, "QI enabled late (planted)",
                    findings=(Finding("planted: see the console", console_lines=(cf.qi_line,)),)),
    ]


BundleFactory = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, trace_text: str, trace_facts: TraceFacts,
                console_facts: ConsoleFacts) -> BundleFactory:
    def make(name: str = "run", *, trace: bool = True, console: bool = True,
             checks: list[CheckResult] | None = None, host_run: bool = True,
             started: str = "2025-11-24T19:18:00+00:00",
             finished: str = "2025-11-24T19:21:30+00:00",
             scale: float = 1.0, plots_data: bool = True,
             workloads: dict[str, object] | None = None,
             durations: dict[str, float] | None = None) -> Path:
        path = tmp_path / name
        manifest = Manifest(
            run_id=name, host={"name": "local", "kind": "local", "address": "127.0.0.1"},
            started=started, finished=finished, verdict=Verdict.FAIL,
            git=git_revision(),
            qemu={"binary": "/usr/bin/qemu-system-x86_64", "version": QEMU_VERSION},
            guest={"kernel": "6.12.117+deb12-amd64",
                   "image_digest": "sha256:" + _sha256(FIXTURES / "capture.sh")},
            durations=durations if durations is not None else {"image": 1.5, "boot": 4.2},
        )
        bundle = Bundle.create(path, manifest)
        if trace:
            _put(bundle, "trace", "trace.log", trace_text)
        if console:
            _put(bundle, "console", "console.log", console_facts.text)
        _put(bundle, "workloads", "workloads.json", workloads or workloads_doc(scale=scale))
        if host_run:
            _put(bundle, "workloads-host", "workloads-host.json", workloads_doc(host=True))
        _put(bundle, "preflight", "preflight.json", [
            {"name": "qemu", "ok": True, "value": QEMU_VERSION, "fix": None},
            {"name": "kvm", "ok": False, "value": "emulation failure", "fix": "use TCG here"},
            # what harness/preflight.py check_sid_qemu() writes: a note (ok None), not a failure
            {"name": "QEMU 11 from sid", "ok": None, "value": "installed (/c/qemu-sid); the local lab's default",
             "fix": "`svmval qemu install-sid`"},
        ])
        if checks is None:
            checks = checks_for(trace_facts, console_facts, plots_data=plots_data)
        _put(bundle, "checks", "checks.json",
             {"schema": CHECKS_SCHEMA, "checks": [c.to_json() for c in checks]})
        return path

    return make


def _put(bundle: Bundle, role: str, name: str, content: object) -> None:
    """Write a bundle file raw, unmasked on purpose: the report must mask whatever a
    careless writer left in (Bundle.add_text would mask it first)."""
    text = content if isinstance(content, str) else json.dumps(content, indent=2) + "\n"
    (bundle.path / name).write_text(text)
    bundle.manifest.files[role] = name
    bundle.save()


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")
