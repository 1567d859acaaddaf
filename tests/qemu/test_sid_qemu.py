"""QEMU 11.1 from Debian sid, run from the cache without a host install: the seed's svm=on."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_image.build import ensure_image
from harness.inventory import LOCAL_HOST, load_inventory
from harness.qemu.probe import probe_qemu
from harness.qemu.session import local_guest
from harness.qemu.sid import NEWEST, SVMVAL, SYSTEM, ensure_sid_qemu, local_qemu
from harness.viommu.capability import Ecap

pytestmark = pytest.mark.slow


def test_sid_qemu_boots_the_guest_with_svm(tmp_path: Path) -> None:
    binary = local_qemu("sid")
    assert binary == str(ensure_sid_qemu())
    info = probe_qemu(binary)
    assert info.version >= (11, 0, 0)
    # 11.x names: probed, not assumed.
    assert (info.iommu_property("flts"), info.iommu_property("svm")) == ("fsts", "svm")
    assert info.trace_events.exists() and info.trace_events != Path("/usr/share/qemu/trace-events-all")
    # Both virtio disks, as the local lab runs: 11.1 once faulted (0x71) on the second.
    with local_guest(ensure_image(), tmp_path / "vm", qemu_binary=binary) as g:
        cmdline = (tmp_path / "vm" / "cmdline.txt").read_text()
        assert "svm=on" in cmdline and "device-iotlb=on" in cmdline and "fsts=on" in cmdline
        dmesg = g.channel.run("dmesg").stdout
    assert "fault reason" not in dmesg, [ln for ln in dmesg.splitlines() if "DMAR" in ln]
    assert "vdb" in dmesg  # the PoCL cache disk probed
    line = next(ln for ln in dmesg.splitlines() if "dmar0: reg_base_addr" in ln)
    ecap = Ecap.decode(int(line.split("ecap ")[1].split()[0], 16))
    assert ecap.prs and ecap.smts and ecap.flts and ecap.pasid  # page requests, scalable, first stage
    assert "SVM disabled" not in dmesg  # the guest driver accepts the unit as SVM-capable


def test_the_local_lab_defaults_to_svmvals_qemu_and_newest_means_sid(tmp_path: Path) -> None:
    assert LOCAL_HOST.qemu == SVMVAL
    inv = tmp_path / "labs.toml"
    inv.write_text('[hosts.local]\nkind = "local"\nguest_memory_mib = 1024\n')
    assert load_inventory(inv).get("local").qemu == SVMVAL
    assert probe_qemu(local_qemu(SVMVAL)).has_device("svmval-sva")
    newest = local_qemu(NEWEST)
    assert newest == str(ensure_sid_qemu())  # sid is reachable here: 11.x, not the system's 10.0
    assert probe_qemu(newest).version > probe_qemu(SYSTEM).version
