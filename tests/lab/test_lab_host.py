"""What `pytest --host lab1` runs on a lab host: preflight, provisioning, the guest under
the host's QEMU, the workloads and checks, the host put back. One run per host (with
`-n N`, one xdist worker per host), judged per workload and per check."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.inventory import HostSpec, Nesting
from harness.remote import SshTarget
from harness.run import RunOutcome, run
from host_setup.provision import LabHost
from reports.bundle import Verdict

_RUNS: dict[str, RunOutcome] = {}


@pytest.fixture
def lab_run(lab_host: HostSpec, artifacts_root: Path, pytestconfig: pytest.Config) -> RunOutcome:
    if lab_host.is_local:
        pytest.skip("the local lab's end-to-end run is tests/e2e; tests/lab runs on lab hosts (--host NAME)")
    if lab_host.name not in _RUNS:  # once per host, shared by the tests below
        _RUNS[lab_host.name] = run(
            lab_host, artifacts_root, workloads=pytestconfig.getoption("svmval_workloads"),
            say=lambda m: print(f"[svmval {lab_host.name}] {m}", flush=True),
        )
    return _RUNS[lab_host.name]


def test_the_run_completes_and_the_host_is_put_back(lab_run: RunOutcome, lab_host: HostSpec) -> None:
    mf = lab_run.bundle.manifest
    assert not mf.error, f"{lab_host.name}: {mf.error} (bundle {lab_run.bundle.path})"
    assert mf.qemu.get("version"), "the run did not record the host's QEMU version"
    with SshTarget(lab_host) as t:
        assert not t.exists(LabHost.lock_dir(lab_host)), "the host lock was not released"
        if lab_host.device:
            driver = t.readlink(f"/sys/bus/pci/devices/{lab_host.device}/driver") or ""
            assert not driver.endswith("/vfio-pci"), f"{lab_host.device} was left on vfio-pci"


def test_every_workload_passes(lab_run: RunOutcome) -> None:
    results = (lab_run.workloads or {}).get("results", [])
    assert results, f"no workload ran: {lab_run.bundle.manifest.error}"
    bad = [f"{r['name']}: {r['verdict']} {r['reason']}" for r in results if r["verdict"] in ("fail", "error")]
    assert not bad, "\n".join(bad)


def test_every_check_passes(lab_run: RunOutcome) -> None:
    assert lab_run.checks, f"no check ran: {lab_run.bundle.manifest.error}"
    bad = [f"{c.name}: {c.summary}" for c in lab_run.checks if c.verdict is not Verdict.PASS]
    assert not bad, "\n".join(bad)


@pytest.mark.hardware
def test_the_assigned_device_is_the_guests_opencl_device(lab_run: RunOutcome, lab_host: HostSpec) -> None:
    """On a host with a device: QEMU assigned it through iommufd, and the workloads ran on
    it (the OpenCL device the guest's runner reported is the inventory's vendor's)."""
    if lab_host.nesting is not Nesting.IOMMUFD_FLTS:
        pytest.skip(f"{lab_host.name} has nesting = {lab_host.nesting.value}: QEMU's emulated VT-d runs there, "
                    "nothing is assigned")
    vm = lab_run.bundle.path / "vm"
    assert f"vfio-pci,host={lab_host.device},iommufd=iommufd0" in (vm / "cmdline.txt").read_text()
    device = lab_run.bundle.manifest.device
    if lab_host.device_vendor:
        assert lab_host.device_vendor.lower() in str(device.get("platform_name", "")).lower() + str(
            device.get("name", "")).lower(), device
