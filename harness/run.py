"""The end-to-end run, one for every host: workload in the guest -> vIOMMU traffic -> verdict.

1. a guest session: on the local lab, preflight + the guest image + a local boot
   (`local_session` here); on a lab host, preflight, provisioning and a boot over SSH
   (`host_setup.lab_run.lab_session`). Both yield a `harness.session.GuestSession`;
   nothing below depends on which;
2. upload the workloads package; run edu_dma with a hold point: while it keeps its
   buffers mapped through the vIOMMU the guest is paused and every page is checked
   GVA -> GPA -> HPA against the guest's live IOMMU tables;
3. run the rest of the workload catalog, each result recorded as it arrives;
4. pause the guest and judge QEMU's vtd_* trace against guest RAM (QI completeness,
   provoked faults) and drive the model's PRQ with the first-touch pages;
5. write JUnit and HTML. Every workload and check result is in the bundle the moment
   it completes (`RunRecord`), so a run that dies keeps what it finished and its
   manifest says where it stopped (`stage`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from guest_image.build import ensure_image
from guest_image.recipe import GUEST_WORKDIR, POCL_CACHE_DIR
from harness.baseline import attach_ratio, run_host_baseline
from harness.checks.faults import ExpectedFault, check_faults
from harness.checks.prq import check_prq_modelled
from harness.checks.prq_real import PRQ_EVENTS, DeviceCounts, check_prq_real
from harness.checks.qi import QiReplay
from harness.checks.seed import SeededPte, restore_pte, retarget_elsewhere, revoke_write
from harness.checks.translation import check_translation, device_translations
from harness.errors import ConfigError, EnvironmentBroken, GuestError, SvmvalError
from harness.gitinfo import git_revision
from harness.guest import GuestChannel
from harness.inventory import HostSpec
from harness.paths import REPO_ROOT
from harness.preflight import run_local_preflight
from harness.qemu.profiles import SLOT_SVA, SVA_DEVICE, sid_of
from harness.qemu.session import local_guest
from harness.qemu.sid import local_qemu
from harness.results import CheckResult, Traffic, Verdict
from harness.seeds import SeedBug
from harness.session import GuestSession
from harness.trace.events import PrqDesc
from harness.trace.follow import EventLog, TraceFollower
from harness.trace.formats import declarations_of
from harness.trace.parser import TraceParseError
from reports.bundle import Bundle, Manifest
from workloads.protocol import HOLD_ENV, HoldPoint, parse_result_line
from workloads.protocol import SCHEMA as WORKLOADS_SCHEMA

Say = Callable[[str], None]
HOLD_DIR = "/tmp/svmval-hold"
HOLD_WORKLOAD = "edu_dma"
FAULT_WORKLOADS = ("edu_dma_fault", "sva_pasid_not_present")  # the workloads that provoke a DMA fault on purpose
GUEST_ENV = {"POCL_CACHE_DIR": POCL_CACHE_DIR, "PYTHONDONTWRITEBYTECODE": "1"}
# How a run gets its guest: given the bundle (for preflight and manifest facts) and a
# progress callback, a context manager that yields the booted session.
SessionFactory = Callable[[HostSpec, Bundle, Say], AbstractContextManager[GuestSession]]


@dataclass
class RunOutcome:
    bundle: Bundle
    checks: list[CheckResult]
    workloads: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.bundle.manifest.verdict is Verdict.PASS


@dataclass
class RunRecord:
    """What the run has finished, written into the bundle the moment it finishes."""

    bundle: Bundle
    results: list[dict[str, Any]] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    about: dict[str, Any] = field(default_factory=dict)  # the runner's host/device facts
    host_baseline: dict[str, Any] | None = None  # the same workloads on the host's OpenCL device
    started: float = field(default_factory=time.monotonic)

    def stage(self, what: str) -> None:
        self.bundle.manifest.stage = what
        self.bundle.save()

    def workload(self, result: dict[str, Any]) -> None:
        self.results.append(result)
        self._write_workloads()

    def check(self, result: CheckResult) -> None:
        self.checks.append(result)
        self.bundle.write_checks(self.checks)

    def runner_facts(self, doc: dict[str, Any]) -> None:
        """Host, device and mode the workload runner reported (its JSON minus results)."""
        self.about.update({k: v for k, v in doc.items() if k != "results"})
        self._write_workloads()

    def workloads_doc(self) -> dict[str, Any] | None:
        if not self.results and not self.about:
            return None
        doc = {"schema": WORKLOADS_SCHEMA, "host": {}, "device": {}, **self.about, "results": self.results}
        return attach_ratio(doc, self.host_baseline)

    def _write_workloads(self) -> None:
        doc = self.workloads_doc()
        if doc is not None:
            self.bundle.add_json("workloads", "workloads.json", doc)
            self.bundle.manifest.device = doc.get("device", {})
            self.bundle.save()


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


def run(
    host: HostSpec,
    artifacts: Path,
    *,
    workloads: list[str] | None = None,
    say: Say = lambda _m: None,
    seed: SeedBug | None = None,
) -> RunOutcome:
    """The whole run on `host`; never raises for a broken environment (it ends up in the
    bundle); ctrl-C is re-raised once the bundle is written (and a lab host restored).
    `seed` plants one of harness.seeds' bugs: the run must then FAIL its named check."""
    bundle = new_bundle(artifacts, host)
    mf = bundle.manifest
    record = RunRecord(bundle)
    if seed is not None:
        mf.host["seeded_bug"] = {"name": seed.name, "what": seed.what, "must_fail": seed.fails}
        if seed.qemu_args and not host.is_local:
            raise ConfigError(f"--seed-bug {seed.name} plants the bug in the local lab's svmval-sva device; "
                              "run it with --host local")
    try:
        if host.is_local:  # a lab host's own OpenCL device is not reached yet (see README)
            record.stage("host baseline")
            record.host_baseline = run_host_baseline(workloads, bundle.path / "workloads-host.json", say)
            if record.host_baseline is not None:
                mf.files["workloads-host"] = "workloads-host.json"
        record.stage("starting the guest")
        t0 = time.monotonic()
        factory = session_factory(host)
        if seed is not None and seed.qemu_args:
            factory = functools.partial(local_session, extra_args=seed.qemu_args)
        with factory(host, bundle, say) as g:
            mf.durations["boot_s"] = round(time.monotonic() - t0, 1)
            mf.qemu = g.qemu.describe()
            bundle.save()
            run_in_guest(g, record, workloads, say, seed)
            record.stage("stopping the guest")
        mf.durations["vm_s"] = round(time.monotonic() - t0, 1)
        record.stage("done")
    except SvmvalError as exc:
        mf.error = "\n".join([f"stopped during {mf.stage}: {exc}", *getattr(exc, "__notes__", [])])
        say(f"run could not complete: {mf.error}")
    except KeyboardInterrupt as exc:
        notes = getattr(exc, "__notes__", [])
        mf.error = "interrupted (ctrl-C); " + ("; ".join(notes) if notes else "the host was restored")
        raise
    finally:
        close_run(record)
    return RunOutcome(bundle, record.checks, record.workloads_doc())


def session_factory(host: HostSpec) -> SessionFactory:
    if host.is_local:
        return local_session
    from host_setup.lab_run import lab_session  # the lab's SSH stack, only when needed

    return lab_session


@contextmanager
def local_session(host: HostSpec, bundle: Bundle, say: Say, extra_args: tuple[str, ...] = ()
                  ) -> Iterator[GuestSession]:
    """This machine: preflight, the guest image, a boot under TCG."""
    mf = bundle.manifest
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
    with local_guest(image, bundle.path / "vm", memory_mib=host.guest_memory_mib, cpus=host.guest_cpus,
                     qemu_binary=qemu, say=say, extra_args=extra_args) as g:
        yield g


def close_run(record: RunRecord) -> None:
    """Whatever happened: register the VM's files, the verdict, the report."""
    collect_vm_files(record.bundle)
    record.bundle.write_checks(record.checks)
    finish_bundle(record.bundle, record.workloads_doc(), record.checks, time.monotonic() - record.started)


def run_in_guest(
    g: GuestSession, record: RunRecord, names: list[str] | None, say: Say, seed: SeedBug | None = None, *,
    hold: bool = True,
) -> None:
    """Workloads and checks in a booted guest (`hold=False` runs edu_dma without its
    held GVA->HPA check)."""
    ch, bundle = g.channel, record.bundle
    keep_trace_formats(bundle, g.trace_format())
    judge = TraceJudge.open(g, f"{bundle.path / 'vm' / 'trace.log'}")
    with closing(judge.follower.stream):  # one open of the trace for the whole run
        say("uploading workloads")
        record.stage("uploading workloads")
        ch.run(f"rm -rf {GUEST_WORKDIR}/workloads {HOLD_DIR} && mkdir -p {GUEST_WORKDIR} {HOLD_DIR}")
        ch.put(REPO_ROOT / "workloads", f"{GUEST_WORKDIR}/workloads")
        listing = ch.run(f"cd {GUEST_WORKDIR} && python3 -m workloads list --names", env=GUEST_ENV)
        if not listing.ok:
            raise GuestError(f"`python3 -m workloads list` failed in the guest: {listing.stderr[-2000:]}")
        catalog = listing.stdout.split()
        selected = [n for n in catalog if names is None or n in names]
        if seed is not None:
            _plant_in_guest(ch, seed)

        if hold and HOLD_WORKLOAD in selected:
            say(f"{HOLD_WORKLOAD}: DMA through the vIOMMU, checked while the buffers are mapped")
            record.stage(f"workload {HOLD_WORKLOAD} (held)")
            _held_run(g, record, judge, seed)
        rest = [n for n in selected if n != HOLD_WORKLOAD or not hold]
        if rest:
            say(f"running {len(rest)} workloads in the guest")
            _run_catalog(ch, record, rest)

        say("judging the trace against guest RAM")
        record.stage("final checks")
        ch.run("sync")
        g.machine.pause()
        try:
            for check in _final_checks(g, judge, record.workloads_doc() or {"results": []}):
                record.check(check)
        finally:
            g.machine.resume()


def _plant_in_guest(ch: GuestChannel, seed: SeedBug) -> None:
    """A seed planted from inside the guest (the svmval_sva module's seed_response)."""
    for command in seed.guest_setup:
        planted = ch.run(command)
        if not planted.ok:
            raise GuestError(f"--seed-bug {seed.name}: `{command}` failed in the guest: "
                             f"{(planted.stderr or planted.stdout)[-500:]}")


def _run_catalog(ch: GuestChannel, record: RunRecord, names: list[str]) -> None:
    """The workloads in one runner process, each result recorded as it arrives. A runner
    killed by a signal (PoCL crashing under a workload) fails the workload it was in and
    the rest go on in a new runner: a crash is a failed workload, never lost results."""
    log: list[str] = []
    remaining = list(names)
    while remaining:
        record.stage(f"workload {remaining[0]}")
        done: list[str] = []

        def arrived(line: str, done: list[str] = done, remaining: list[str] = remaining) -> None:
            result = parse_result_line(line)
            if result is not None:
                record.workload(result)
                done.append(result["name"])
                left = [n for n in remaining if n not in done]
                record.stage(f"workload {left[0]}" if left else "workloads done")

        # `; exit $?` keeps the shell between sshd and python: a signal that kills python
        # comes back as exit status 128+N instead of a session with no status at all.
        r = ch.run(
            f"cd {GUEST_WORKDIR} && python3 -m workloads run {' '.join(map(shlex.quote, remaining))} "
            f"--stream --json /tmp/svmval-results.json; exit $?",
            env=GUEST_ENV, timeout=1800, on_line=arrived,
        )
        log.append(r.stdout + r.stderr)
        record.bundle.add_text("workloads-log", "workloads.log", "\n".join(log))
        if r.exit_code in (0, 1):
            local = record.bundle.path / "workloads-rest.json"
            ch.get("/tmp/svmval-results.json", local)
            record.runner_facts(json.loads(local.read_text()))
            local.unlink()
            return
        left = [n for n in remaining if n not in done]
        if r.exit_code <= 128 or not left:
            raise GuestError(f"the workload runner crashed (exit {r.exit_code}): {r.stderr[-2000:]}")
        crashed, remaining = left[0], left[1:]
        record.workload({
            "name": crashed, "verdict": "fail", "category": "", "needs": [], "timings": {}, "bandwidth": {},
            "pages": [], "reason": f"the workload runner died under it, killed by signal {r.exit_code - 128} "
                                   f"(exit {r.exit_code}); its output is in workloads.log",
        })


def _held_run(g: GuestSession, record: RunRecord, judge: TraceJudge, seed: SeedBug | None) -> None:
    ch = g.channel
    out = "/tmp/svmval-edu.json"
    ch.run(
        # Detached from the SSH session (stdin too), or the channel stays open with it.
        f"cd {GUEST_WORKDIR} && {HOLD_ENV}={HOLD_DIR} setsid nohup python3 -m workloads run "
        f"{HOLD_WORKLOAD} --json {out} < /dev/null > /tmp/svmval-edu.log 2>&1 &",
        env={**GUEST_ENV, **dict(seed.guest_env if seed is not None else ())},
    )
    point = HoldPoint(PurePosixPath(HOLD_DIR), HOLD_WORKLOAD)
    held_checks = False
    deadline = time.monotonic() + 300
    while ch.run(f"test -e {point.ready}").exit_code != 0:
        if ch.run(f"test -e {out}").exit_code == 0:
            break  # finished without holding: it skipped or failed before its DMA
        if time.monotonic() > deadline:
            log = ch.run("cat /tmp/svmval-edu.log").stdout
            raise GuestError(f"{HOLD_WORKLOAD} never reached its hold point; its log:\n{log[-3000:]}")
        time.sleep(0.5)
    else:
        held = json.loads(ch.run(f"cat {point.ready}").stdout)
        g.machine.pause()
        try:
            try:
                judge.follower.catch_up()
            except TraceParseError as exc:
                record.check(_not_judged("translation", HOLD_WORKLOAD, exc))
                record.check(_not_judged("qi-completeness", f"{HOLD_WORKLOAD} (held)", exc))
            else:
                wrong = _seed_wrong_translation(g, judge, held) if seed is not None and seed.wrong_translation else None
                try:
                    record.check(_translation_check(g, judge, held))
                finally:
                    if wrong is not None:
                        restore_pte(g.machine.guest_memory(writable=True), wrong)
                record.check(_held_qi_check(g, judge, held, seed is not None and seed.stale_pte))
            held_checks = True
            if seed is not None and seed.stale_use:
                _seed_stale_use(g, judge, held)
        finally:
            g.machine.resume()
        ch.run(f"touch {point.release}")
    deadline = time.monotonic() + 300
    while ch.run(f"test -e {out}").exit_code != 0:
        if time.monotonic() > deadline:
            raise GuestError(f"{HOLD_WORKLOAD} did not finish after its hold point")
        time.sleep(0.5)
    local = record.bundle.path / "workloads-edu.json"
    ch.get(out, local)
    doc = json.loads(local.read_text())
    local.unlink()
    record.runner_facts(doc)
    for result in doc["results"]:
        record.workload(result)
    if not held_checks:
        # Nothing judged is an ERROR naming why, never a silently missing check.
        why = "; ".join(f"{r['name']} {r['verdict']}: {r.get('reason') or 'no reason given'}"
                        for r in doc["results"]) or "it reported no result"
        for name, workload in (("translation", HOLD_WORKLOAD), ("qi-completeness", f"{HOLD_WORKLOAD} (held)")):
            record.check(CheckResult(
                name=name, verdict=Verdict.ERROR, traffic=Traffic.REAL, workload=workload,
                summary=f"not judged: {HOLD_WORKLOAD} never held its DMA mappings for the host to walk ({why})"))


def _seed_wrong_translation(g: GuestSession, judge: TraceJudge, held: dict[str, Any]) -> SeededPte:
    """--seed-bug wrong-translation: the first held page's PTE points 2 MiB away, for the
    translation check only (put back before anything else runs)."""
    root = judge.replay.root
    if root is None or not held["pages"]:
        raise GuestError("--seed-bug wrong-translation: no root-table pointer or no held page to retarget")
    return retarget_elsewhere(g.machine.guest_memory(writable=True), root, int(held["sid"]),
                              int(held["pages"][0]["gva"]))


def _seed_stale_use(g: GuestSession, judge: TraceJudge, held: dict[str, Any]) -> None:
    """--seed-bug stale-use: with the guest paused after the held checks, take write
    permission away from the PTEs of the pages edu_dma reads again after its hold, and
    issue no invalidation. The device's reads then hit its cached (writable) entries:
    stale uses only the check across time can see, as the guest's own unmap
    invalidates them before the final pause. (Permission, not the address: VFIO's unmap
    looks the physical page up in these PTEs to unpin it.)"""
    root = judge.replay.root
    if root is None:
        raise GuestError("--seed-bug stale-use: the trace has no root-table pointer to find the PTEs by")
    memory = g.machine.guest_memory(writable=True)
    for gva in held.get("read_again", []):
        revoke_write(memory, root, int(held["sid"]), int(gva))


@dataclass
class TraceJudge:
    """The run's one pass over the trace: opened once, caught up at each judgement."""

    follower: TraceFollower
    replay: QiReplay
    translations: EventLog
    faults: EventLog
    prq: EventLog

    @classmethod
    def open(cls, g: GuestSession, label: str) -> TraceJudge:
        sva = frozenset({sid_of(SLOT_SVA)}) if g.qemu.has_device(SVA_DEVICE) else frozenset()
        replay, translations = QiReplay(pasid_sids=sva), EventLog("vtd_dmar_translate")
        faults = EventLog("vtd_dmar_fault", "vtd_frr_new")
        prq = EventLog(*PRQ_EVENTS)
        follower = TraceFollower(g.open_trace(), label, g.trace_format(), [replay, translations, faults, prq])
        return cls(follower, replay, translations, faults, prq)


def _not_judged(name: str, workload: str | None, exc: TraceParseError) -> CheckResult:
    return CheckResult(name=name, verdict=Verdict.ERROR, traffic=Traffic.REAL, workload=workload,
                       summary=f"not judged: the trace could not be read: {exc}")


def _translation_check(g: GuestSession, judge: TraceJudge, held: dict[str, Any]) -> CheckResult:
    root, sid = judge.replay.root, int(held["sid"])
    if root is None:
        return CheckResult(name="translation", verdict=Verdict.ERROR, traffic=Traffic.REAL, workload=HOLD_WORKLOAD,
                           summary="not judged: the trace has no root-table pointer (vtd_reg_dmar_root), so the "
                                   "guest's tables cannot be walked: was tracing on from boot?")
    seen = device_translations(judge.translations.events, sid)
    return check_translation(HOLD_WORKLOAD, sid, held["pages"], g.machine.guest_memory(), root, seen,
                             g.machine.host_view())


def _held_qi_check(g: GuestSession, judge: TraceJudge, held: dict[str, Any], seed_stale_pte: bool) -> CheckResult:
    """QI completeness while the device's mappings are live, judged on a copy of the
    replay (the run's replay goes on to the end). With `seed_stale_pte` a first-stage
    PTE of a page the device just used is retargeted in guest RAM with no invalidation
    — the missing invalidation the check must catch — and restored before the guest
    runs again."""
    t0 = time.monotonic()
    replay = copy.deepcopy(judge.replay)
    seeded = None
    memory = g.machine.guest_memory(writable=seed_stale_pte)
    if seed_stale_pte and replay.root is not None and held["pages"]:
        seeded = retarget_elsewhere(memory, replay.root, int(held["sid"]), int(held["pages"][0]["gva"]))
    try:
        result = replay.finish(memory, started=t0)
    finally:
        if seeded is not None:
            restore_pte(memory, seeded)
    return dataclasses.replace(result, workload=f"{HOLD_WORKLOAD} (held)")


def _final_checks(g: GuestSession, judge: TraceJudge, results: dict[str, Any]) -> list[CheckResult]:
    memory = g.machine.guest_memory()
    t0 = time.monotonic()
    expected = [
        ExpectedFault(f"{r['name']} ({f['case']})", int(r["sid"]), int(f["iova"]), bool(f["write"]),
                      remapped_after=bool(f.get("remapped_after", False)),
                      pasid=None if f.get("pasid") is None else int(f["pasid"]))
        for r in results["results"] if r["verdict"] == "pass"
        for f in r.get("faults", [])
    ]
    provokers = [r for r in results["results"] if r["name"] in FAULT_WORKLOADS]
    none_provoked = ("no workload that provokes a fault ran (" + ", ".join(FAULT_WORKLOADS) + " were not selected)"
                     if not provokers else "no workload provoked a fault: " + "; ".join(
                         f"{r['name']} {r['verdict']}: {r.get('reason') or 'no reason given'}" for r in provokers))
    try:
        judge.follower.catch_up()
    except TraceParseError as exc:
        checks = [_not_judged("qi-completeness", None, exc), _not_judged("faults", None, exc)]
    else:
        requested = frozenset((e.sid, e.addr & ~0xFFF) for e in judge.prq.events if isinstance(e, PrqDesc))
        checks = [judge.replay.finish(memory, started=t0),
                  check_faults(judge.faults.events, expected, memory, judge.replay.root, g.machine.console_text(),
                               requested, walks=judge.replay.fault_walks, none_provoked=none_provoked)]
    if g.qemu.has_device(SVA_DEVICE):
        checks.append(_real_prq_check(judge, results))
        return checks
    # No device on this QEMU issues page requests: the model's PRQ is driven with the
    # pages PoCL workloads first-touched, and the check says it is modelled.
    for r in results["results"]:
        if r.get("first_touch") and r["verdict"] == "pass":
            pages = [int(p["gva"]) for p in r.get("pages", [])]
            checks.append(check_prq_modelled(r["name"], pages))
    return checks


def _real_prq_check(judge: TraceJudge, results: dict[str, Any]) -> CheckResult:
    """Page requests of the svmval-sva device against what it counted itself."""
    sva = [r for r in results["results"] if "counters_delta" in r]
    deltas = [r["counters_delta"] for r in sva]
    codes = ("success", "invalid", "failure")
    device = DeviceCounts(
        page_requests=sum(int(d.get("page_requests", 0)) for d in deltas),
        responses={name: sum(int(d.get(f"prg_{name}", 0)) for d in deltas) for name in codes},
    ) if deltas else None
    skipped = "; ".join(f"{r['name']}: {r['verdict']} {r.get('reason', '')}" for r in sva[:3])
    why = ("" if any(r["verdict"] == "pass" for r in sva)
           else f"no SVA workload passed on the svmval-sva device ({skipped})" if sva
           else "no SVA workload was selected, so the device made no page request")
    return check_prq_real(judge.prq.events, device, sva_workloads=sum(r["verdict"] == "pass" for r in sva),
                          why_none=why)


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
