"""QEMU probing and command lines, against the QEMU installed here."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.lab_swap import lab_nested_here

from harness.errors import ConfigError
from harness.qemu.probe import QemuInfo, QemuProbeError, probe_qemu
from harness.qemu.profiles import Profile, VmSpec, build_argv, lab_nested, sid_of


@pytest.fixture(scope="module")
def qemu() -> QemuInfo:
    return probe_qemu()


@pytest.fixture
def spec(tmp_path: Path) -> VmSpec:
    for name in ("vmlinuz", "initrd", "root.img"):
        (tmp_path / name).write_bytes(b"x")
    return VmSpec(
        kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd", rootfs=tmp_path / "root.img",
        cmdline="console=ttyS0", run_dir=tmp_path, ssh_port=2222, device="0000:6a:01.0",
    )


def test_probe_reads_version_and_first_stage_property(qemu: QemuInfo) -> None:
    assert qemu.version >= (10, 0, 0)
    assert "tcg" in qemu.accelerators
    # 10.0 spells them x-flts / x-scalable-mode; 11.1 fsts / scalable-mode: both map.
    assert qemu.iommu_property("flts") in ("x-flts", "fsts")
    assert qemu.iommu_property("scalable_mode") in ("x-scalable-mode", "scalable-mode")
    assert qemu.has_device("edu")


def test_iommu_settings_are_spelled_as_each_qemu_spells_them(qemu: QemuInfo) -> None:
    settings: dict[str, bool | int] = {"caching_mode": True, "scalable_mode": True, "flts": True,
                                       "pasid": True, "aw_bits": 48, "fs1gp": False}
    here = qemu.iommu_args(settings)
    if qemu.version < (11, 0, 0):
        assert here == "caching-mode=on,x-scalable-mode=on,x-flts=on,x-pasid-mode=on,aw-bits=48,fs1gp=off"
    # QEMU 11.1's names, as probe_qemu read them from Debian sid's 11.1.3: a width for PASIDs, no pt.
    eleven = QemuInfo(binary="qemu-system-x86_64", version=(11, 1, 3), version_text="11.1.3",
                      accelerators=frozenset({"tcg"}), iommu_properties=frozenset(
                          {"aw-bits", "caching-mode", "device-iotlb", "dma-translation", "eim", "fs1gp", "fsts",
                           "intremap", "pasid-bits", "scalable-mode", "snoop-control", "stale-tm", "svm",
                           "version"}))
    assert eleven.iommu_args(settings) == "caching-mode=on,scalable-mode=on,fsts=on,pasid-bits=20,aw-bits=48,fs1gp=off"
    assert eleven.iommu_args({"pasid": False}) == "pasid-bits=0"
    with pytest.raises(QemuProbeError, match=r"\(11.1.3\) has no intel-iommu property for pt"):
        eleven.iommu_args({"pt": True})


def test_local_profile_puts_every_dma_device_behind_the_viommu(qemu: QemuInfo, spec: VmSpec) -> None:
    argv = build_argv(Profile.LOCAL_EMULATED, spec, qemu)
    joined = " ".join(argv)
    iommu = next(a for a in argv if a.startswith("intel-iommu"))
    assert "caching-mode=on" in iommu and f"{qemu.iommu_property('flts')}=on" in iommu
    for dev in ("virtio-blk-pci-non-transitional", "virtio-net-pci-non-transitional",
                "virtio-rng-pci-non-transitional"):
        assert any(a.startswith(dev) and "iommu_platform=on" in a for a in argv), dev
    assert "edu,dma_mask=0xffffffffffffffff" in joined
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in joined  # forwards bound to loopback only
    assert f"unix:{spec.qmp_socket}" in joined  # QMP on a unix socket, never TCP
    assert f"mem-path={spec.ram_path},share=on" in joined
    assert "-cpu" in argv and argv[argv.index("-cpu") + 1] == "max,-la57"
    if qemu.iommu_property("svm") is None:
        assert "device-iotlb" not in iommu  # 10.0 refuses it together with x-pasid-mode


def test_lab_profile_assigns_the_device_through_iommufd(qemu: QemuInfo, spec: VmSpec) -> None:
    spec = VmSpec(**{**spec.__dict__, "hugepage_ram": True})
    argv = lab_nested(spec, qemu)
    assert f"mem-path={spec.ram_path},share=on,prealloc=on" in " ".join(argv)
    assert spec.ram_path == Path("/dev/hugepages") / f"svmval-{spec.run_dir.name}"
    joined = " ".join(argv)
    assert "iommufd,id=iommufd0" in joined
    assert "vfio-pci,host=0000:6a:01.0,iommufd=iommufd0,bus=rp0" in joined
    assert "-accel kvm" in joined and "prealloc=on" in joined
    assert "vfio-pci" not in " ".join(lab_nested(spec, qemu, with_vfio=False))


def test_bad_inputs_are_named(qemu: QemuInfo, spec: VmSpec, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a PCI address|PCI address"):
        lab_nested(VmSpec(**{**spec.__dict__, "device": "6a:01.0", "hugepage_ram": True}), qemu)
    with pytest.raises(ConfigError, match="hugepage_ram=True"):
        lab_nested(spec, qemu)
    with pytest.raises(ConfigError, match="does not exist"):
        build_argv(Profile.LOCAL_EMULATED, VmSpec(**{**spec.__dict__, "kernel": tmp_path / "nope"}), qemu)
    with pytest.raises(ConfigError, match="too small"):
        build_argv(Profile.LOCAL_EMULATED, VmSpec(**{**spec.__dict__, "memory_mib": 128}), qemu)


def test_source_ids_follow_pci_slots() -> None:
    assert sid_of(6) == 0x30 and sid_of(3) == 0x18 and sid_of(0, bus=1) == 0x100


@pytest.mark.slow
def test_lab_command_line_is_accepted_by_this_qemu(qemu: QemuInfo, spec: VmSpec, tmp_path: Path) -> None:
    """The lab-nested argv, minus what needs the lab (iommufd + vfio-pci, KVM, hugepages),
    started paused (-S): QEMU must accept every property and answer QMP."""
    from guest_image.build import ensure_image
    from harness.qemu.machine import Machine

    image = ensure_image()  # QEMU checks the kernel and initrd it is given
    hp = tmp_path / "hugepages"
    hp.mkdir()
    lab = VmSpec(**{**spec.__dict__, "kernel": image.kernel, "initrd": image.initrd, "rootfs": image.rootfs,
                    "hugepages_path": hp, "hugepage_ram": True, "memory_mib": 512})
    # What this machine lacks, swapped one for one; everything else is the lab's line.
    argv = lab_nested_here(lab, qemu) + ["-S"]
    with Machine(argv, tmp_path / "run", console_log=lab.console_log, qmp_socket=lab.qmp_socket) as m:
        assert m.status() == "prelaunch"
        iommu = [d for d in m.hmp("info qtree").splitlines() if "intel-iommu" in d]
        assert iommu, "QEMU did not create the intel-iommu device"
