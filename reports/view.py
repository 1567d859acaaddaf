"""A bundle read for reporting: typed workload rows, checks and one flat list of
outcomes (one per workload and per check) that JUnit, HTML and compare all share,
so the three never disagree on what passed.

Input files written by other areas are read leniently where their schema leaves
room (timings/bandwidth may be absent) but a wrong schema tag is an error: a
report that silently misreads a newer format is worse than none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from reports.bundle import Bundle, CheckResult, Finding, Manifest, Traffic, Verdict

WORKLOADS_SCHEMA = "svmval.workloads/2"
# /2 adds cts, devices, workarounds, exercises, and (from harness.baseline) bandwidth_host and
# bandwidth_ratio; /1 files read the same, those simply absent.
WORKLOADS_SCHEMAS = ("svmval.workloads/1", WORKLOADS_SCHEMA)
FAILING = (Verdict.FAIL, Verdict.ERROR)


@dataclass(frozen=True)
class WorkloadRow:
    """One entry of workloads.json `results`."""

    name: str
    verdict: Verdict
    reason: str
    needs: tuple[str, ...]
    timings: dict[str, float]  # seconds, as reported
    bandwidth: dict[str, float]  # flavour -> GB/s
    pages: int  # number of page records (gva/gpa pairs) the workload reported
    bandwidth_host: dict[str, float] = field(default_factory=dict)  # flavour -> GB/s on the host
    bandwidth_ratio: dict[str, float] = field(default_factory=dict)  # flavour -> guest / host
    # svmval-sva workloads: the device's counter deltas (page_requests, atc_hits, ...)
    device_counters: dict[str, float] = field(default_factory=dict)

    @property
    def time_s(self) -> float:
        """Wall time for JUnit: an explicit total if the workload gave one, else the
        sum of its phases."""
        for key in ("total", "total_s", "wall", "wall_s"):
            if key in self.timings:
                return self.timings[key]
        return sum(self.timings.values())


@dataclass(frozen=True)
class Outcome:
    """One judged thing: a testcase in JUnit, a row in the verdict tables."""

    kind: str  # "workload" | "check" | "run"
    classname: str
    name: str
    verdict: Verdict
    message: str  # the reason / summary, one line
    time_s: float = 0.0
    traffic: Traffic | None = None
    findings: tuple[Finding, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identity across runs, for --compare."""
        return f"{self.classname}::{self.name}"

    @property
    def failing(self) -> bool:
        return self.verdict in FAILING


def _numbers(value: Any, default_key: str) -> dict[str, float]:
    """A dict of numbers from a number, a dict (non-numbers dropped) or nothing."""
    if isinstance(value, bool) or value is None:
        return {}
    if isinstance(value, int | float):
        return {default_key: float(value)}
    if isinstance(value, dict):
        return {
            str(k): float(v)
            for k, v in value.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    return {}


def parse_workloads(data: dict[str, Any], where: Path) -> list[WorkloadRow]:
    if data.get("schema") not in WORKLOADS_SCHEMAS:
        raise ConfigError(
            f"{where}: schema {data.get('schema')!r} is not {WORKLOADS_SCHEMA!r}; "
            f"render it with the svmval version that wrote it"
        )
    rows = []
    for i, r in enumerate(data.get("results", [])):
        try:
            verdict = Verdict(r["verdict"])
            name = str(r["name"])
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                f"{where}: results[{i}] has no valid name/verdict ({exc}); "
                f"expected verdict pass|fail|skip"
            ) from exc
        needs = r.get("needs") or ()
        if not isinstance(needs, list | tuple):
            needs = [needs]
        rows.append(
            WorkloadRow(
                name=name,
                verdict=verdict,
                reason=str(r.get("reason") or ""),
                needs=tuple(str(n) for n in needs),
                timings=_numbers(r.get("timings"), "total"),
                # workloads report bytes/s (svmval.workloads/1); people read GB/s
                bandwidth={
                    k: v / 1e9
                    for k, v in _numbers(r.get("bandwidth"), str(r.get("flavour") or name)).items()
                },
                pages=len(r.get("pages") or ()),
                bandwidth_host={k: v / 1e9 for k, v in _numbers(r.get("bandwidth_host"), name).items()},
                bandwidth_ratio=_numbers(r.get("bandwidth_ratio"), name),
                device_counters=_numbers(r.get("counters_delta"), name),
            )
        )
    return rows


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid JSON ({exc}); was the run that wrote it cut short?"
        ) from exc


@dataclass
class RunView:
    path: Path
    manifest: Manifest
    workloads: list[WorkloadRow]
    workloads_host: list[WorkloadRow]
    workloads_meta: dict[str, Any]  # "host" and "device" sections of workloads.json
    checks: list[CheckResult]
    preflight: list[dict[str, Any]]

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    def file(self, role: str) -> Path | None:
        p = Bundle(self.path, self.manifest).file(role)
        return p if p is not None and p.exists() else None

    def outcomes(self) -> list[Outcome]:
        out: list[Outcome] = []
        if self.manifest.error:
            # A run that could not complete must show up as an error in CI, even
            # when nothing else was recorded.
            out.append(Outcome("run", "svmval", "run", Verdict.ERROR, self.manifest.error))
        for w in self.workloads:
            props = {f"timing.{k}": f"{v:g}" for k, v in w.timings.items()}
            props |= {f"bandwidth.{k}": f"{v:g}" for k, v in w.bandwidth.items()}
            if w.needs:
                props["needs"] = ", ".join(w.needs)
            out.append(Outcome("workload", "workloads", w.name, w.verdict, w.reason, w.time_s,
                               properties=props))
        for c in self.checks:
            props = {f"count.{k}": str(v) for k, v in c.counts.items()}
            props["traffic"] = c.traffic.value
            out.append(Outcome("check", f"checks.{c.name}", c.workload or "run", c.verdict,
                               c.summary, c.duration_s, c.traffic, c.findings, props))
        return out

    def counts(self) -> dict[str, int]:
        tally = {v.value: 0 for v in Verdict}
        for o in self.outcomes():
            tally[o.verdict.value] += 1
        return tally

    def started(self) -> datetime | None:
        return _parse_time(self.manifest.started)

    def duration_s(self) -> float | None:
        start, end = _parse_time(self.manifest.started), _parse_time(self.manifest.finished)
        if start and end:
            return (end - start).total_seconds()
        return sum(self.manifest.durations.values()) or None

    def environment(self) -> dict[str, str]:
        """The facts a reader needs to reproduce the run, by stable names."""
        m = self.manifest
        device = m.device or self.workloads_meta.get("device") or {}
        rev = str(m.git.get("rev", ""))
        if rev and m.git.get("dirty"):
            rev += " (dirty)"
        facts = {
            "host": _join(m.host.get("name"), m.host.get("kind"), m.host.get("address")),
            "device": _first(device, "name", "device", "vendor"),
            "device.svm": _first(device, "svm_caps", "svm", "svm_capabilities"),
            "kernel": _first(m.guest, "kernel", "kernel_version"),
            "qemu": _join(_first(m.qemu, "version"), _first(m.qemu, "binary")),
            "image.digest": _first(m.guest, "image_digest", "digest"),
            "git.rev": rev,
        }
        return {k: v for k, v in facts.items() if v}


def _first(d: dict[str, Any], *keys: str) -> str:
    for k in keys:
        v = d.get(k)
        if v not in (None, "", [], {}):
            return ", ".join(map(str, v)) if isinstance(v, list | tuple) else str(v)
    return ""


def _join(*parts: Any) -> str:
    return " / ".join(str(p) for p in parts if p not in (None, ""))


def _parse_time(s: str) -> datetime | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def load_run(path: Path) -> RunView:
    bundle = Bundle.open(path)
    rv = RunView(path, bundle.manifest, [], [], {}, bundle.checks(), [])
    wl = rv.file("workloads")
    if wl:
        data = _read_json(wl)
        rv.workloads = parse_workloads(data, wl)
        rv.workloads_meta = {k: data.get(k) or {} for k in ("host", "device")}
    # The host run is optional; its documented name is the fallback when a writer
    # copied it in without naming the role.
    host = rv.file("workloads-host") or (path / "workloads-host.json")
    if host.exists():
        rv.workloads_host = parse_workloads(_read_json(host), host)
    pf = rv.file("preflight")
    if pf:
        data = _read_json(pf)
        rows = data.get("verdicts", []) if isinstance(data, dict) else data
        rv.preflight = [r for r in rows if isinstance(r, dict)]
    return rv


def find_bundles(root: Path) -> list[Path]:
    """Bundle directories at or one level below `root`."""
    found = [root] if (root / "manifest.json").exists() else []
    found += sorted(p.parent for p in root.glob("*/manifest.json"))
    return found
