"""Many hosts at once, as nightly hardware CI runs them: `pytest tests/lab --host A --host B
-n 2` — one xdist worker per host, each host's lock honoured, one merged JUnit file."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Lab

from harness.inventory import load_inventory
from harness.paths import REPO_ROOT
from harness.remote import SshTarget
from host_setup.provision import LabHost

pytestmark = pytest.mark.slow
MakeLab = Callable[[str], Lab]


def test_two_hosts_on_two_workers_with_locks_honoured(make_lab: MakeLab, tmp_path: Path) -> None:
    free, busy = make_lab("spr-dsa"), make_lab("no-sm")
    inv = tmp_path / "labs.toml"
    inv.write_text(
        free.inventory(hugepages=1024).read_text().replace("[hosts.sshtest]", "[hosts.lab-a]")
        + "\n" + busy.inventory().read_text().replace("[hosts.sshtest]", "[hosts.lab-b]")
    )
    # Someone else's run holds lab-b: its tests must fail on the lock and leave it alone.
    other = load_inventory(inv).get("lab-b")
    with SshTarget(other) as t:
        LabHost.acquire(t, other, "someone-elses-run")
    junit = tmp_path / "junit.xml"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/lab", "--host", "lab-a", "--host", "lab-b", "-n", "2",
         "--inventory", str(inv), "--artifacts", str(tmp_path / "artifacts"), "--workload", "edu_dma",
         "--workload", "edu_dma_fault",
         f"--junitxml={junit}", "-p", "no:cacheprovider", "-v"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200, env={**os.environ, "COLUMNS": "200"},
    )
    (tmp_path / "inner.log").write_text(out.stdout + out.stderr)
    # xdist's loadgroup appends "@<group>" to the ids it schedules
    def verdict(c: ET.Element) -> str:
        tag = c[0].tag if len(c) else ""
        return "fail" if tag in ("failure", "error") else "skip" if tag == "skipped" else "pass"

    cases = {(str(c.get("name")).split("@")[0], verdict(c)) for c in ET.parse(junit).getroot().iter("testcase")}
    assert {n for n, v in cases if v == "pass"} == {
        "test_the_run_completes_and_the_host_is_put_back[lab-a]", "test_every_workload_passes[lab-a]",
        "test_every_check_passes[lab-a]"}, out.stdout[-4000:]
    assert {n for n, v in cases if v == "fail"} == {
        "test_the_run_completes_and_the_host_is_put_back[lab-b]", "test_every_workload_passes[lab-b]",
        "test_every_check_passes[lab-b]"}, out.stdout[-4000:]
    # The hardware test needs an assigned device: these hosts run the emulated VT-d.
    assert {n for n, v in cases if v == "skip"} == {
        "test_the_assigned_device_is_the_guests_opencl_device[lab-a]",
        "test_the_assigned_device_is_the_guests_opencl_device[lab-b]"}, out.stdout[-4000:]
    assert "locked by run someone-elses-run" in out.stdout
    # One worker per host: each host's tests ran on a single worker.
    workers = {h: {ln.split("]")[0] for ln in out.stdout.splitlines() if f"[{h}]" in ln and ln.startswith("[gw")}
               for h in ("lab-a", "lab-b")}
    assert all(len(w) == 1 for w in workers.values()) and workers["lab-a"] != workers["lab-b"], workers
    assert free.fake.driver() == "idxd" and free.fake.nr_hugepages == 0 and not free.lock.exists()
    assert busy.lock.exists() and busy.fake.driver() == "i915"  # still the other run's
