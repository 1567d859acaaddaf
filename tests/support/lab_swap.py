"""The lab-nested command line with only what this machine lacks swapped out: KVM for
TCG, the host CPU for `max,-la57`, no hugepage preallocation, no iommufd/vfio-pci
(there is no device to assign). Everything else, the memory layout included, is the
lab's own line."""

from __future__ import annotations

from harness.qemu.probe import QemuInfo
from harness.qemu.profiles import Profile, VmSpec, build_argv, lab_nested


def lab_nested_here(spec: VmSpec, info: QemuInfo) -> list[str]:
    argv = lab_nested(spec, info, with_vfio=False)
    argv[argv.index("-accel") + 1] = "tcg"
    argv[argv.index("-cpu") + 1] = "max,-la57"
    return [a.replace(",prealloc=on", "") for a in argv]


def build_argv_here(profile: Profile, spec: VmSpec, info: QemuInfo) -> list[str]:
    return lab_nested_here(spec, info) if profile is Profile.LAB_NESTED else build_argv(profile, spec, info)
