"""The end-to-end run on the local lab: workload in the guest -> vIOMMU traffic -> verdict.

1. preflight; build or reuse the guest image;
2. boot the guest (QEMU TCG, emulated VT-d: scalable mode, first stage, caching mode);
3. upload the workloads package; run edu_dma with a hold point: while it keeps its
   buffers mapped through the vIOMMU the guest is paused and every page is checked
   GVA -> GPA -> HPA against the guest's live IOMMU tables;
4. run the rest of the workload catalog;
5. pause the guest and judge QEMU's vtd_* trace against guest RAM (QI completeness,
   provoked faults) and drive the model's PRQ with the first-touch pages;
6. write the result bundle, JUnit and HTML.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from guest_image.build import ensure_image
from guest_image.recipe import GUEST_WORKDIR, POCL_CACHE_DIR
from harness.checks.faults import ExpectedFault, check_faults
from harness.checks.prq import check_prq_modelled
from harness.checks.qi import QiReplay
from harness.checks.seed import first_stage_leaf, restore_pte, retarget_pte
from harness.checks.translation import check_translation, device_translations
from harness.errors import EnvironmentBroken, GuestError, SvmvalError
from harness.gitinfo import git_revision
from harness.inventory import HostSpec
from harness.paths import REPO_ROOT
from harness.preflight import run_local_preflight
from harness.qemu.session import local_guest
from harness.qemu.sid import local_qemu
from harness.trace.events import RegDmarRoot
from harness.trace.formats import declarations_of
from harness.trace.parser import iter_events
from reports.bundle import Bundle, CheckResult, Manifest, Traffic, Verdict

Say = Callable[[str], None]
HOLD_DIR = "/tmp/svmval-hold"
HOLD_WORKLOAD = "edu_dma"
GUEST_ENV = {"POCL_CACHE_DIR": POCL_CACHE_DIR, "PYTHONDONTWRITEBYTECODE": "1"}


@dataclass
class RunOutcome:
    bundle: Bundle
    checks: list[CheckResult]
    workloads: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.bundle.manifest.verdict is Verdict.PASS


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_bundle(artifacts: Path, host: HostSpec) -> Bundle:
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{host.name}"
    manifest = Manifest(
        run_id=run_id,
        host={"name": host.name, "kind": host.kind.value, "address": host.address if not host.is_local else "local"},
        started=_now(),
        git=git_revision(),
    )
    bundle = Bundle.create(artifacts / "runs" / run_id, manifest)
    # Runs on several hosts at once share the folder: swap the link in atomically.
    tmp = artifacts / f".latest-{run_id}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(bundle.path.relative_to(artifacts))
    os.replace(tmp, artifacts / "latest")
    return bundle


def run_local(
    host: HostSpec,
    artifacts: Path,
    *,
    workloads: list[str] | None = None,
    say: Say = lambda _m: None,
    seed_stale_pte: bool = False,
) -> RunOutcome:
    """The whole run; never raises for a broken environment: it ends up in the bundle."""
    bundle = new_bundle(artifacts, host)
    mf = bundle.manifest
    checks: list[CheckResult] = []
    results: dict[str, Any] | None = None
    t_start = time.monotonic()
    try:
        say("preflight")
        qemu = local_qemu(host.qemu, say)
        verdicts = run_local_preflight(qemu)
        bundle.add_json("preflight", "preflight.json", [v.__dict__ for v in verdicts])
        failed = [v for v in verdicts if v.failed]
        if failed:
            raise EnvironmentBroken("preflight failed: " + "; ".join(f"{v.name}: {v.value} ({v.fix})" for v in failed))
        t0 = time.monotonic()
        image = ensure_image(say)
        mf.durations["image_s"] = round(time.monotonic() - t0, 1)
        mf.guest = {
            "image_digest": image.digest,
            "kernel": image.manifest["kernel"],
            "suite": image.manifest["suite"],
            **{k: v for k, v in image.manifest["packages"].items() if not k.startswith("linux-image")},
        }
        vm_dir = bundle.path / "vm"
        t0 = time.monotonic()
        with local_guest(image, vm_dir, memory_mib=host.guest_memory_mib, cpus=host.guest_cpus,
                         qemu_binary=qemu, say=say) as g:
            mf.durations["boot_s"] = round(time.monotonic() - t0, 1)
            mf.qemu = g.qemu.describe()
            bundle.save()
            results, checks = run_in_guest(g, bundle, workloads, say, seed_stale_pte)
        mf.durations["vm_s"] = round(time.monotonic() - t0, 1)
    except SvmvalError as exc:
        mf.error = str(exc)
        say(f"run could not complete: {exc}")
    finally:
        close_run(bundle, results, checks, t_start)
    return RunOutcome(bundle, checks, results)


def close_run(bundle: Bundle, results: dict[str, Any] | None, checks: list[CheckResult], t_start: float) -> None:
    """Whatever happened: register the VM's files, the results and checks, the verdict, the report."""
    collect_vm_files(bundle)
    if results is not None:
        bundle.add_json("workloads", "workloads.json", results)
        bundle.manifest.device = results.get("device", {})
    bundle.write_checks(checks)
    finish_bundle(bundle, results, checks, time.monotonic() - t_start)


def run_in_guest(
    g: Any, bundle: Bundle, names: list[str] | None, say: Say, seed_stale_pte: bool = False, *, hold: bool = True
) -> tuple[dict[str, Any], list[CheckResult]]:
    """Workloads and checks in a booted guest: a local GuestSession or a lab host's
    RemoteSession (`hold=False` runs edu_dma without its held GVA->HPA check)."""
    ch = g.channel
    keep_trace_formats(bundle, g.trace_format())
    say("uploading workloads")
    ch.run(f"rm -rf {GUEST_WORKDIR}/workloads {HOLD_DIR} && mkdir -p {GUEST_WORKDIR} {HOLD_DIR}")
    ch.put(REPO_ROOT / "workloads", f"{GUEST_WORKDIR}/workloads")
    listing = ch.run(f"cd {GUEST_WORKDIR} && python3 -m workloads list --names", env=GUEST_ENV)
    if not listing.ok:
        raise GuestError(f"`python3 -m workloads list` failed in the guest: {listing.stderr[-2000:]}")
    catalog = listing.stdout.split()
    selected = [n for n in catalog if names is None or n in names]
    checks: list[CheckResult] = []
    parts: list[dict[str, Any]] = []

    if hold and HOLD_WORKLOAD in selected:
        say(f"{HOLD_WORKLOAD}: DMA through the vIOMMU, checked while the buffers are mapped")
        part, hold_checks = _held_run(g, bundle, seed_stale_pte)
        parts.append(part)
        checks += hold_checks
    rest = [n for n in selected if n != HOLD_WORKLOAD or not hold]
    if rest:
        say(f"running {len(rest)} workloads in the guest")
        r = ch.run(
            f"cd {GUEST_WORKDIR} && python3 -m workloads run {' '.join(map(shlex.quote, rest))} "
            f"--json /tmp/svmval-results.json",
            env=GUEST_ENV,
            timeout=1800,
        )
        bundle.add_text("workloads-log", "workloads.log", r.stdout + r.stderr)
        if r.exit_code not in (0, 1):
            raise GuestError(f"the workload runner crashed (exit {r.exit_code}): {r.stderr[-2000:]}")
        local = bundle.path / "workloads-rest.json"
        ch.get("/tmp/svmval-results.json", local)
        parts.append(json.loads(local.read_text()))
        local.unlink()
    results = _merge(parts)

    say("judging the trace against guest RAM")
    ch.run("sync")
    g.machine.pause()
    try:
        checks += _final_checks(g, results)
    finally:
        g.machine.resume()
    return results, checks


def _held_run(g: Any, bundle: Bundle, seed_stale_pte: bool) -> tuple[dict[str, Any], list[CheckResult]]:
    ch = g.channel
    out = "/tmp/svmval-edu.json"
    ch.run(
        # Detached from the SSH session (stdin too), or the channel stays open with it.
        f"cd {GUEST_WORKDIR} && SVMVAL_HOLD_DIR={HOLD_DIR} setsid nohup python3 -m workloads run "
        f"{HOLD_WORKLOAD} --json {out} < /dev/null > /tmp/svmval-edu.log 2>&1 &",
        env=GUEST_ENV,
    )
    ready = f"{HOLD_DIR}/{HOLD_WORKLOAD}.ready"
    deadline = time.monotonic() + 300
    checks: list[CheckResult] = []
    while ch.run(f"test -e {ready}").exit_code != 0:
        if ch.run(f"test -e {out}").exit_code == 0:
            break  # finished without holding: it skipped or failed before its DMA
        if time.monotonic() > deadline:
            log = ch.run("cat /tmp/svmval-edu.log").stdout
            raise GuestError(f"{HOLD_WORKLOAD} never reached its hold point; its log:\n{log[-3000:]}")
        time.sleep(0.5)
    else:
        held = json.loads(ch.run(f"cat {ready}").stdout)
        g.machine.pause()
        try:
            checks.append(_translation_check(g, held))
            checks.append(_held_qi_check(g, held, seed_stale_pte))
        finally:
            g.machine.resume()
        ch.run(f"touch {HOLD_DIR}/{HOLD_WORKLOAD}.release")
    deadline = time.monotonic() + 300
    while ch.run(f"test -e {out}").exit_code != 0:
        if time.monotonic() > deadline:
            raise GuestError(f"{HOLD_WORKLOAD} did not finish after its hold point")
        time.sleep(0.5)
    local = bundle.path / "workloads-edu.json"
    ch.get(out, local)
    part = json.loads(local.read_text())
    local.unlink()
    return part, checks


def _trace_root(trace: Path, fmt: Path) -> int | None:
    root = None
    for ev in iter_events(trace, names=["vtd_reg_dmar_root"], trace_events=fmt):
        if isinstance(ev, RegDmarRoot):
            root = ev.addr
    return root


def _translation_check(g: Any, held: dict[str, Any]) -> CheckResult:
    trace, fmt = g.trace_file(), g.trace_format()
    root = _trace_root(trace, fmt)
    sid = int(held["sid"])
    if root is None:
        raise GuestError("the trace has no root-table pointer (vtd_reg_dmar_root): is tracing on?")
    seen = device_translations(iter_events(trace, names=["vtd_dmar_translate"], trace_events=fmt), sid)
    return check_translation(HOLD_WORKLOAD, sid, held["pages"], g.machine.guest_memory(), root, seen,
                             g.machine.host_view())


def _held_qi_check(g: Any, held: dict[str, Any], seed_stale_pte: bool) -> CheckResult:
    """QI completeness while the device's mappings are live. With `seed_stale_pte` a
    first-stage PTE of a page the device just used is retargeted in guest RAM with
    no invalidation — the missing invalidation the check must catch — and restored
    before the guest runs again."""
    t0 = time.monotonic()
    replay = QiReplay()
    replay.feed(iter_events(g.trace_file(), trace_events=g.trace_format()))
    seeded = None
    memory = g.machine.guest_memory(writable=seed_stale_pte)
    if seed_stale_pte and replay.root is not None and held["pages"]:
        page = int(held["pages"][0]["gva"])
        _at, old = first_stage_leaf(memory, replay.root, int(held["sid"]), page)
        seeded = retarget_pte(memory, replay.root, int(held["sid"]), page, (old & ~0xFFF) ^ 0x200000)
    try:
        result = replay.finish(memory, started=t0)
    finally:
        if seeded is not None:
            restore_pte(memory, seeded)
    return dataclasses.replace(result, workload=f"{HOLD_WORKLOAD} (held)")


def _final_checks(g: Any, results: dict[str, Any]) -> list[CheckResult]:
    trace, fmt = g.trace_file(), g.trace_format()
    memory = g.machine.guest_memory()
    t0 = time.monotonic()
    replay = QiReplay()
    replay.feed(iter_events(trace, trace_events=fmt))
    checks = [replay.finish(memory, started=t0)]
    expected = [
        ExpectedFault(r["name"], int(r["sid"]), int(r["fault_iova"]), False)
        for r in results["results"]
        if r.get("fault_iova") is not None and r["verdict"] == "pass"
    ]
    faults = iter_events(trace, names=["vtd_dmar_fault", "vtd_frr_new"], trace_events=fmt)
    checks.append(check_faults(faults, expected, memory, replay.root, g.machine.console_text()))
    for r in results["results"]:
        if r.get("first_touch") and r["verdict"] == "pass":
            pages = [int(p["gva"]) for p in r.get("pages", [])]
            checks.append(check_prq_modelled(r["name"], pages))
    return checks


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    if not parts:
        return {"schema": "svmval.workloads/1", "host": {}, "device": {}, "results": []}
    merged = dict(parts[-1])
    merged["results"] = [r for p in parts for r in p["results"]]
    return merged


def keep_trace_formats(bundle: Bundle, trace_events_all: Path) -> None:
    """The vtd_* format lines of the QEMU that writes the trace, kept beside it: a
    report re-rendered elsewhere reads the trace with the formats it was written in."""
    out = bundle.path / "vm" / "trace-formats"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(declarations_of(trace_events_all.read_text(), "vtd_"))
    bundle.manifest.files["trace-formats"] = "vm/trace-formats"
    bundle.save()


def collect_vm_files(bundle: Bundle) -> None:
    vm = bundle.path / "vm"
    for role, name in (("trace", "trace.log"), ("console", "console.log"), ("qemu-stderr", "qemu.stderr"),
                       ("cmdline", "cmdline.txt"), ("guest-dmesg", "guest-dmesg.log"),
                       ("host-dmesg", "host-dmesg.log")):
        src = vm / name
        if src.exists():
            # Keep them in vm/ (their names are what findings cite); register them.
            bundle.manifest.files[role] = f"vm/{name}"
    bundle.save()


def finish_bundle(
    bundle: Bundle, results: dict[str, Any] | None, checks: list[CheckResult], elapsed: float
) -> None:
    mf = bundle.manifest
    counts = {"pass": 0, "fail": 0, "skip": 0, "error": 0}
    for r in (results or {}).get("results", []):
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    for c in checks:
        counts[c.verdict.value] += 1
    mf.counts = counts
    mf.durations["total_s"] = round(elapsed, 1)
    mf.finished = _now()
    if mf.error:
        mf.verdict = Verdict.ERROR
    elif counts["fail"] or counts["error"]:
        mf.verdict = Verdict.FAIL
    else:
        mf.verdict = Verdict.PASS
    bundle.save()
    from reports.render import render_bundle

    render_bundle(bundle.path)
    bundle.manifest = Bundle.open(bundle.path).manifest  # the renderer named its outputs


def traffic_note(check: CheckResult) -> str:
    return "real" if check.traffic is Traffic.REAL else "modelled"
