"""A lab-nested run (nesting = "iommufd-flts") through to its checks, over a real sshd in
front of a captured host: guest RAM on the host's hugetlbfs mount, read back from there
by every check. What this machine lacks (KVM, iommufd, the device) is swapped out as in
test_profiles' -S validation; the rest is the lab's own command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Lab
from support.lab_swap import build_argv_here

import host_setup.lab_run
import host_setup.remote_vm
from harness.run import run
from reports.bundle import Verdict

pytestmark = pytest.mark.slow


def test_a_lab_nested_run_reads_guest_ram_where_qemu_put_it(
        make_lab: Callable[[str], Lab], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = make_lab("spr-dsa")
    hugetlbfs = tmp_path / "hugepages"  # stands in for the host's /dev/hugepages mount
    hugetlbfs.mkdir()
    host = lab.host(hugepages=1024, nesting="iommufd-flts", hugepages_mount=str(hugetlbfs))
    monkeypatch.setattr(host_setup.remote_vm, "build_argv", build_argv_here)
    # The captured SPR host's ECAP lacks PASID and PRS, so its preflight refuses nesting
    # (tests/host_setup/test_preflight.py shows that); this test is about the run after it.
    monkeypatch.setattr(host_setup.lab_run, "blocking", lambda verdicts, host: [])

    outcome = run(host, tmp_path / "artifacts", workloads=["svm_coarse_buffer"])
    mf = outcome.bundle.manifest
    assert mf.error == "", mf.error
    # Only svm_coarse_buffer ran: nothing provoked a fault, an ERROR naming why; the rest pass.
    for c in outcome.checks:
        if c.name == "faults":
            assert c.verdict is Verdict.ERROR and "edu_dma_fault" in c.summary, c.summary
        else:
            assert c.verdict is Verdict.PASS, (c.name, c.summary)
    cmdline = (outcome.bundle.path / "vm" / "cmdline.txt").read_text()
    assert f"mem-path={hugetlbfs}/svmval-{mf.run_id}" in cmdline  # QEMU's RAM on the mount ...
    (qi,) = [c for c in outcome.checks if c.name == "qi-completeness"]
    # ... and the QI check read the live tables from there (main once opened
    # run_dir/guest-ram, which does not exist on this layout, and crashed here).
    assert qi.verdict is Verdict.PASS and qi.counts["descriptors"] > 0, qi.summary
    assert "cached_judged" in qi.counts  # the RAM comparison ran (it is an ERROR when it cannot)
    assert not list(hugetlbfs.iterdir())  # the RAM file is gone: its hugepages are free again
