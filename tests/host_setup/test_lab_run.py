"""The lab run over SSH, for real: the "lab host" is this machine behind a Debian sshd,
its hardware a captured Sapphire Rapids host (nesting = none: QEMU's emulated VT-d runs
there under TCG). QEMU is started through the SSH session and the guest is reached
through the host's connection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Lab

from guest_image.build import ensure_image
from harness.paths import REPO_ROOT
from harness.remote import SshTarget
from harness.run import run
from host_setup.remote_vm import send_image
from reports.bundle import Bundle, Traffic, Verdict

pytestmark = pytest.mark.slow
MakeLab = Callable[[str], Lab]
WORKLOADS = ["edu_dma", "edu_dma_fault", "svm_fine_buffer"]


def _no_qemu_of(run_id: str) -> bool:
    return subprocess.run(["pgrep", "-f", f"svmval-{run_id}"], capture_output=True).returncode == 1


def _restored(lab: Lab) -> None:
    assert lab.fake.driver() == "idxd" and lab.fake.nr_hugepages == 0 and not lab.lock.exists()


def test_the_local_lab_run_works_on_a_host_reached_over_ssh(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab("spr-dsa")
    host = lab.host(hugepages=1024)
    seen: list[str] = []
    outcome = run(host, tmp_path / "artifacts", workloads=WORKLOADS, say=seen.append)
    mf = outcome.bundle.manifest
    assert mf.verdict is Verdict.PASS, mf.error
    assert [r["name"] for r in outcome.workloads["results"]] == WORKLOADS  # type: ignore[index]
    checks = {c.name: c for c in outcome.checks}
    # The QI and fault checks judged real traffic: the trace and the guest RAM on the host.
    assert checks["qi-completeness"].traffic is Traffic.REAL and checks["qi-completeness"].verdict is Verdict.PASS
    assert checks["faults"].verdict is Verdict.PASS
    # GVA->GPA->HPA while edu_dma held its buffers: QMP through the SSH forward, QEMU's
    # pagemap read on the host.
    tr = checks["translation"]
    assert tr.verdict is Verdict.PASS and tr.counts["hpa_checked"] == tr.counts["pages"] > 0, tr.summary
    vm = outcome.bundle.path / "vm"
    assert f"-name svmval-{mf.run_id}" in (vm / "cmdline.txt").read_text()  # started through SSH on the host
    assert "SVMVAL-GUEST-READY" in (vm / "console.log").read_text()
    assert "vtd_inv_desc" in (vm / "trace.log").read_text()
    assert "DMAR: Intel(R) Virtualization Technology for Directed I/O" in (vm / "guest-dmesg.log").read_text()
    assert (vm / "host-dmesg.log").read_text()  # the host kernel's log, or why it could not be read
    assert {"guest-dmesg", "host-dmesg"} <= set(mf.files)
    assert any("SSH up through the host" in m for m in seen)
    assert mf.qemu["version"] and mf.host["device"] == "0000:6a:01.0"
    _restored(lab)
    assert _no_qemu_of(mf.run_id)
    # The image went over once; the next run finds it by its digest.
    again: list[str] = []
    with SshTarget(host) as t:
        send_image(t, host, ensure_image(), again.append)
    assert again == [f"sshtest: image {ensure_image().digest[:12]} already there"]


def test_qemu_dying_mid_workload_is_an_error_with_artefacts_and_a_restored_host(
    make_lab: MakeLab, tmp_path: Path
) -> None:
    lab = make_lab("spr-dsa")
    host = lab.host(hugepages=1024)
    killed: list[str] = []

    def say(msg: str) -> None:
        if msg.startswith("running") and not killed:
            # QEMU goes down while the guest compiles and runs its kernels.
            def kill() -> None:
                pid = json.loads((lab.lock / "journal.json").read_text())["qemu"][0]["pid"]
                os.kill(pid, signal.SIGKILL)  # this run's QEMU, by the pid it journaled
                killed.append(str(pid))

            threading.Timer(3.0, kill).start()

    outcome = run(host, tmp_path / "artifacts", workloads=["svm_fine_buffer"], say=say)
    mf = outcome.bundle.manifest
    assert killed, "the run never reached its workloads"
    assert mf.verdict is Verdict.ERROR
    assert "guest" in mf.error.lower() or "connection" in mf.error.lower(), mf.error
    assert (outcome.bundle.path / "vm" / "console.log").exists()  # artefacts came back
    assert (outcome.bundle.path / "vm" / "qemu.stderr").exists()
    _restored(lab)


def test_ctrl_c_during_the_run_restores_the_host_and_keeps_the_bundle(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab("spr-dsa")
    inv = lab.inventory(hugepages=1024)
    artifacts = tmp_path / "artifacts"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "--inventory", str(inv), "run", "--host", "sshtest",
         "--artifacts", str(artifacts), "--workload", "svm_fine_buffer"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "running 1 workloads" in line:
            break
    else:
        pytest.fail("the run ended before its workloads:\n" + "".join(lines))
    assert lab.fake.driver() == "vfio-pci" and lab.lock.exists()
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0, rest
    _restored(lab)
    manifest = json.loads(next(artifacts.glob("runs/*/manifest.json")).read_text())
    assert manifest["error"].startswith("interrupted (ctrl-C)")
    bundle = Bundle.open(next(artifacts.glob("runs/*")))
    assert _no_qemu_of(bundle.manifest.run_id)
    assert (bundle.path / "vm" / "console.log").exists()
