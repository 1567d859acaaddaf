"""A run whose QEMU dies keeps what it had finished: every workload result and check
result is in the bundle the moment it completes, and the manifest says where it stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness.inventory import HostSpec
from harness.run import run
from reports.bundle import Bundle, Verdict

pytestmark = pytest.mark.slow
VICTIM = "soak"  # QEMU is killed while this one runs (for 2 s: the kill lands inside it)


def _kill_qemu_when(artifacts: Path, stage: str, stop: threading.Event) -> None:
    while not stop.is_set():
        for manifest in artifacts.glob("runs/*/manifest.json"):
            try:
                now = json.loads(manifest.read_text()).get("stage", "")
            except ValueError:
                continue  # caught mid-write
            if now == stage:
                pids = subprocess.run(["pgrep", "-f", "--", f"-D {manifest.parent}/vm/trace.log"],
                                      capture_output=True, text=True).stdout.split()
                for pid in pids:
                    os.kill(int(pid), signal.SIGKILL)
                if pids:
                    return
        time.sleep(0.2)


def test_qemu_killed_during_the_catalog_keeps_the_finished_results(host: HostSpec, tmp_path: Path) -> None:
    if not host.is_local:
        pytest.skip("the local lab's QEMU is killed here")
    stop = threading.Event()
    killer = threading.Thread(target=_kill_qemu_when, args=(tmp_path, f"workload {VICTIM}", stop), daemon=True)
    killer.start()
    try:
        outcome = run(host, tmp_path, workloads=["edu_dma", "svm_coarse_buffer", VICTIM])
    finally:
        stop.set()
    mf = Bundle.open(outcome.bundle.path).manifest
    assert mf.verdict is Verdict.ERROR and mf.stage == f"workload {VICTIM}"
    assert mf.error.startswith(f"stopped during workload {VICTIM}: "), mf.error
    # From the files alone, as a later reader sees them:
    done = json.loads((outcome.bundle.path / "workloads.json").read_text())["results"]
    assert [(r["name"], r["verdict"]) for r in done] == [("edu_dma", "pass"), ("svm_coarse_buffer", "pass")]
    checks = json.loads((outcome.bundle.path / "checks.json").read_text())["checks"]
    held = {(c["name"], c["workload"]): c["verdict"] for c in checks}
    assert held == {("translation", "edu_dma"): "pass", ("qi-completeness", "edu_dma (held)"): "pass"}
    assert mf.counts == {"pass": 4, "fail": 0, "skip": 0, "error": 0}
