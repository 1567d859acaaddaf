"""Preflight, provisioning and restore on lab hosts over real SSH: each host is a captured
real machine (tests/fixtures/hosts, sources in SOURCES.md) behind a Debian sshd on
127.0.0.1, with the kernel's PCI driver binding emulated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Lab
from support.sshd import Sshd

from harness.paths import REPO_ROOT
from harness.remote import ConnectionLost, LocalTarget, SshTarget
from harness.run import run
from host_setup.preflight import run_preflight
from host_setup.preflight_line import PreflightLine
from host_setup.provision import DeviceBusy, HostLocked, LabHost, provisioned, restore_host
from reports.bundle import Verdict

MakeLab = Callable[[str], Lab]


def _preflight(lab: Lab) -> dict[str, PreflightLine]:
    host = lab.host()
    with SshTarget(host) as t:
        return {v.name: v for v in run_preflight(t, host)}


def _untouched(lab: Lab, driver: str) -> None:
    assert lab.fake.driver() == driver
    assert lab.fake.driver_override() in ("(null)", "")
    assert lab.fake.nr_hugepages == 0
    assert not lab.lock.exists()


def test_preflight_of_a_sapphire_rapids_host_whose_units_lack_pasid(make_lab: MakeLab) -> None:
    v = _preflight(make_lab("spr-dsa"))
    ecap = v["dmar0 ECAP"]
    # As published: scalable mode, both stages and nesting, but PASID off in ECAP.
    assert ecap.ok is False and "ecap 0x3ee9e86f050df" in ecap.value
    assert "lacks PASID" in ecap.value and "second-stage" not in ecap.value
    assert v["kernel cmdline"].ok is True
    assert v["device driver"].value == "idxd"
    group = v["device IOMMU group"]
    assert group.ok is False and "not behind an enabled IOMMU" in group.value


def test_preflight_of_a_host_without_scalable_mode(make_lab: MakeLab) -> None:
    v = _preflight(make_lab("no-sm"))
    for unit in ("dmar0", "dmar1"):
        ecap = v[f"{unit} ECAP"]
        assert ecap.ok is False and "scalable mode" in ecap.value and ecap.fix
    cmdline = v["kernel cmdline"]
    assert cmdline.ok is False and "intel_iommu=on,sm_on" in cmdline.fix
    # Its integrated GPU does list PASID, ATS and PRI (lspci -vv as published).
    assert v["device PASID/ATS/PRI"].ok is True


def test_preflight_of_a_device_sharing_its_iommu_group(make_lab: MakeLab) -> None:
    v = _preflight(make_lab("shared-group"))
    group = v["device IOMMU group"]
    assert group.ok is False
    assert "0000:02:00.0" in group.value and "shares its group" in group.fix
    assert v["VT-d units"].ok is False  # no DMAR unit was published


def test_provisioning_hands_the_device_to_vfio_and_restores_it(make_lab: MakeLab) -> None:
    lab = make_lab("spr-dsa")
    host = lab.host(hugepages=1024)
    with SshTarget(host) as t, provisioned(t, host, "run-a") as held:
        assert lab.fake.driver() == "vfio-pci" and lab.fake.driver_override() == "vfio-pci"
        assert lab.fake.nr_hugepages == 1024
        journal = json.loads((lab.lock / "journal.json").read_text())
        assert (journal["run_id"], journal["driver"], journal["hugepages"]) == ("run-a", "idxd", 0)
        assert held.journal.bound_vfio
    _untouched(lab, "idxd")


def test_a_failure_inside_the_run_still_restores_the_host(make_lab: MakeLab) -> None:
    lab = make_lab("spr-dsa")
    host = lab.host(hugepages=1024)
    with pytest.raises(RuntimeError, match="workload blew up"), SshTarget(host) as t:
        with provisioned(t, host, "run-b"):
            raise RuntimeError("workload blew up")
    _untouched(lab, "idxd")


def test_a_second_run_on_a_locked_host_is_refused_and_changes_nothing(make_lab: MakeLab) -> None:
    lab = make_lab("spr-dsa")
    host = lab.host()
    with SshTarget(host) as t1, provisioned(t1, host, "first-run"):
        with SshTarget(host) as t2, pytest.raises(HostLocked) as err:
            with provisioned(t2, host, "second-run"):
                pytest.fail("the second run got the host")
        assert "first-run" in str(err.value) and "svmval restore --host sshtest" in str(err.value)
        assert lab.fake.driver() == "vfio-pci" and lab.lock.exists()  # still the first run's
    _untouched(lab, "idxd")


def test_a_device_already_on_vfio_is_left_to_its_owner(make_lab: MakeLab) -> None:
    lab = make_lab("spr-dsa")
    lab.fake.bind("vfio-pci")  # someone else's VM has it
    host = lab.host(hugepages=1024)
    with SshTarget(host) as t, pytest.raises(DeviceBusy, match="already bound to vfio-pci"):
        with provisioned(t, host, "run-c"):
            pytest.fail("provisioned a device someone else owns")
    assert lab.fake.driver() == "vfio-pci"  # not taken away from its owner
    assert lab.fake.nr_hugepages == 0 and not lab.lock.exists()


def _drop_connections(sshd: Sshd) -> None:
    """Kill the per-connection sshd processes: every session drops, the listener stays."""
    master = int((sshd.dir / "sshd.pid").read_text())
    tree: list[str] = []
    todo = [master]
    while todo:  # monitor and session processes, all descendants of the listener
        kids = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True).stdout.split()
        tree += kids
        todo += [int(k) for k in kids]
    for pid in tree:
        os.kill(int(pid), signal.SIGKILL)


def test_a_dropped_connection_is_restored_after_reconnecting(make_lab: MakeLab) -> None:
    lab = make_lab("spr-dsa")
    host = lab.host(hugepages=1024)
    with SshTarget(host) as t, pytest.raises(ConnectionLost, match="lost the SSH connection"):
        with provisioned(t, host, "run-d"):
            threading.Timer(1.0, _drop_connections, [lab.sshd]).start()
            t.run("sleep 30", timeout=60)  # the connection drops under a running command
    _untouched(lab, "idxd")


def test_svmval_restore_puts_back_a_host_a_dead_run_left_behind(make_lab: MakeLab) -> None:
    lab = make_lab("spr-dsa")
    inv = lab.inventory(hugepages=1024)
    # A run that is SIGKILLed while it holds the host: no exit path runs.
    script = (
        "import sys, time\nfrom harness.inventory import load_inventory\nfrom harness.remote import SshTarget\n"
        "from host_setup.provision import provisioned\n"
        f"host = load_inventory({str(inv)!r}).get('sshtest')\n"
        "with SshTarget(host) as t, provisioned(t, host, 'doomed-run'):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    proc.kill()
    proc.wait(10)
    assert lab.fake.driver() == "vfio-pci" and lab.lock.exists()
    out = subprocess.run(
        [sys.executable, "-m", "harness.cli", "--inventory", str(inv), "restore", "--host", "sshtest"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    assert "back to idxd" in out.stdout and "nr_hugepages back to 0" in out.stdout and "lock released" in out.stdout
    _untouched(lab, "idxd")
    host = lab.host()
    with SshTarget(host) as t:
        assert restore_host(t, host) == []  # nothing left to do


def test_a_missing_ecap_bit_stops_the_run_before_anything_changes(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab("spr-dsa")
    host = lab.host(nesting="iommufd-flts", hugepages=1024)
    outcome = run(host, tmp_path / "artifacts")
    mf = outcome.bundle.manifest
    assert mf.verdict is Verdict.ERROR
    assert "preflight failed on 'sshtest', nothing was changed" in mf.error and "lacks PASID" in mf.error
    assert "Sapphire Rapids or later" in mf.error  # the fix travels with the failure
    assert (outcome.bundle.path / "preflight.json").exists()
    _untouched(lab, "idxd")


def test_the_lock_names_its_owner(make_lab: MakeLab) -> None:
    lab = make_lab("spr-dsa")
    host = lab.host()
    with SshTarget(host) as t:
        held = LabHost.acquire(t, host, "owner-run")
        journal = LabHost.read_journal(t, host)
        assert journal is not None and journal.run_id == "owner-run" and f"pid {os.getpid()}" in journal.owner
        assert held.restore() == ["lock released"]


def test_ctrl_c_is_a_keyboard_interrupt_and_restores(make_lab: MakeLab) -> None:
    lab = make_lab("spr-dsa")
    host = lab.host(hugepages=1024)
    with SshTarget(host) as t, pytest.raises(KeyboardInterrupt):
        with provisioned(t, host, "run-e"):
            signal.raise_signal(signal.SIGINT)
    _untouched(lab, "idxd")


def test_one_api_for_this_machine_and_a_host_over_ssh(make_lab: MakeLab, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = make_lab("no-sm")
    host = lab.host(hugepages=1024)
    monkeypatch.setenv("PATH", f"{lab.fake.bin}:{os.environ['PATH']}")  # what the sshd gives its sessions
    with SshTarget(host) as remote, LocalTarget(host) as local:
        assert run_preflight(local, host) == run_preflight(remote, host)
        with provisioned(local, host, "local-run"):
            assert lab.fake.driver() == "vfio-pci" and lab.fake.nr_hugepages == 1024
            journal = LabHost.read_journal(remote, host)
            assert journal is not None and journal.run_id == "local-run"
    assert lab.fake.driver() == "i915" and lab.fake.nr_hugepages == 0 and not lab.lock.exists()
