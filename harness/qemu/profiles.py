"""QEMU command lines for the two ways svmval runs a guest.

`local-emulated`: this machine, TCG, QEMU's emulated VT-d in scalable mode with
first-stage translation, PASIDs and caching mode; the guest's disk, network and
rng DMA through it (iommu_platform=on), plus QEMU's `edu` DMA device.

`lab-nested`: a lab host, KVM, a VFIO-assigned PASID-capable device through
iommufd, intel-iommu x-flts + caching-mode so the host IOMMU nests the guest's
first stage, guest RAM on hugepages.

Both keep guest RAM in a shared memory-backend-file (the host reads guest-physical
memory live), QMP on a unix socket, the serial console in a file and the vtd_*
trace in `trace.log`.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from harness.errors import ConfigError
from harness.qemu.probe import QemuInfo, QemuProbeError

_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")

# PCI slots on pcie.0, fixed so source-ids in traces are stable run to run.
SLOT_DISK = 3
SLOT_NET = 4
SLOT_RNG = 5
SLOT_EDU = 6
SLOT_CACHE = 7
SLOT_SVA = 8  # svmval's own PASID/ATS/PRI test device (docs/TESTDEV.md), source-id 0x40
SVA_DEVICE = "svmval-sva"


def sid_of(slot: int, bus: int = 0, fn: int = 0) -> int:
    """PCI requester id (source-id) of a device on pcie.0 at `slot`."""
    return (bus << 8) | (slot << 3) | fn


class Profile(StrEnum):
    LOCAL_EMULATED = "local-emulated"
    LAB_NESTED = "lab-nested"


@dataclass(frozen=True)
class VmSpec:
    """Everything a profile needs; paths are on the machine that runs QEMU."""

    kernel: Path
    initrd: Path
    rootfs: Path
    cmdline: str
    run_dir: Path
    memory_mib: int = 2048
    cpus: int = 2
    ssh_port: int = 0  # host side of the 127.0.0.1 forward to the guest's sshd
    cache_disk: Path | None = None  # persistent ext4 (label svmcache) for PoCL's kernel cache
    device: str | None = None  # lab: PCI BDF to assign
    hugepages_path: Path = Path("/dev/hugepages")
    hugepage_ram: bool = False  # guest RAM in hugepages_path (lab-nested), not in run_dir
    extra_trace_events: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    # False when QEMU runs on a lab host: paths are the host's, so they are not checked
    # here and the caller sends the trace-events file (trace_events_text) over.
    local: bool = True

    @property
    def ram_path(self) -> Path:
        """Where QEMU keeps guest RAM: the one place QEMU's command line and every
        reader of guest memory (local or over SFTP) take it from."""
        if self.hugepage_ram:
            return self.hugepages_path / f"svmval-{self.run_dir.name}"
        return self.run_dir / "guest-ram"

    @property
    def qmp_socket(self) -> Path:
        # sun_path holds 107 bytes: deep artefact folders get a short name in /tmp.
        path = self.run_dir / "qmp.sock"
        if len(str(path)) < 100:
            return path
        digest = hashlib.sha256(str(self.run_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"svmval-qmp-{digest}.sock"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def trace_log(self) -> Path:
        return self.run_dir / "trace.log"

    @property
    def trace_events(self) -> Path:
        return self.run_dir / "trace-events"


# QEMU >= 10.1 drains every block device when one virtio-blk starts or stops its
# ioeventfd, and the drain kicks every other virtio-blk's queues: a disk Linux has
# not reset yet then DMAs from the rings SeaBIOS left, through a vIOMMU that never
# mapped them (fault 0x71 at probe). Without ioeventfd there is no kick.
BLK_OPTS = "iommu_platform=on,ioeventfd=off"

# Interrupt remapping is most of a vtd_* trace and none of what the checks judge.
TRACE_EVENTS = (
    "vtd_inv_*",
    "vtd_reg_write",
    "vtd_reg_dmar_root",
    "vtd_reg_write_gcmd",
    "vtd_iotlb_*",
    "vtd_dmar_*",
    "vtd_frr_new",
    "vtd_fault_disabled",
    "vtd_switch_address_space",
    "vtd_re_not_present",
    "vtd_ce_not_present",
    "vtd_context_cache_reset",
    "vtd_pasid_cache_*",
    "vtd_warn_invalid_qi_tail",
    "vtd_fsts_ppf",
    # svmval's QEMU only (host_setup/qemu_build/patches/0002): page requests and ATS.
    "vtd_prq_desc",
    "vtd_ats_translate",
    # patches/0003: what each first-stage walk read (vtd_iotlb_hit_source is a vtd_iotlb_*).
    "vtd_fs_walk_entry",
)


def trace_events_text(spec: VmSpec) -> str:
    return "\n".join((*TRACE_EVENTS, *spec.extra_trace_events)) + "\n"


def _check_files(spec: VmSpec, *paths: Path) -> None:
    for p in paths:
        if spec.local and not p.exists():
            raise ConfigError(f"VM input {p} does not exist; build the guest image (`svmval image build`)")
    if spec.memory_mib < 512:
        raise ConfigError(f"guest memory {spec.memory_mib} MiB is too small; use >= 512")


def _iommu_device(info: QemuInfo, *, nested: bool) -> str:
    settings: dict[str, bool | int] = {"intremap": True, "caching_mode": True, "scalable_mode": True,
                                       "flts": True}
    if info.iommu_property("pasid") is not None:
        settings["pasid"] = True
    if info.iommu_property("svm") and not nested:
        # 11.1: svm=on needs device-iotlb=on; it makes the guest driver SVM-capable.
        settings |= {"svm": True, "device_iotlb": True}
    # 10.0 refuses x-pasid-mode together with device-iotlb: leave it off there.
    try:
        return "intel-iommu," + info.iommu_args(settings)
    except QemuProbeError as exc:
        raise ConfigError(str(exc)) from None


def _common(spec: VmSpec, info: QemuInfo) -> list[str]:
    if spec.local:
        spec.trace_events.write_text(trace_events_text(spec))
    return [
        info.binary,
        "-name", "svmval-guest",
        "-display", "none",
        "-nodefaults",
        "-no-reboot",
        "-m", f"{spec.memory_mib}M",
        "-smp", str(spec.cpus),
        "-machine", "memory-backend=ram0",
        "-kernel", str(spec.kernel),
        "-initrd", str(spec.initrd),
        "-append", spec.cmdline,
        "-chardev", f"file,id=con0,path={spec.console_log}",
        "-serial", "chardev:con0",
        "-qmp", f"unix:{spec.qmp_socket},server=on,wait=off",
        "-trace", f"events={spec.trace_events}",
        "-D", str(spec.trace_log),
        "-msg", "timestamp=on",
    ]


def local_emulated(spec: VmSpec, info: QemuInfo) -> list[str]:
    _check_files(spec, spec.kernel, spec.initrd, spec.rootfs)
    if "tcg" not in info.accelerators:
        raise ConfigError(f"{info.binary} has no TCG accelerator; install Debian's qemu-system-x86")
    if not info.has_device("edu"):
        raise ConfigError(f"{info.binary} lacks the edu device the local lab's DMA workload drives")
    argv = _common(spec, info)
    argv += [
        "-machine", "q35,kernel-irqchip=split",
        "-accel", "tcg",
        # 5-level CPU paging makes Linux disable SVM with a 4-level first stage.
        "-cpu", "max,-la57",
        "-object", f"memory-backend-file,id=ram0,size={spec.memory_mib}M,mem-path={spec.ram_path},share=on",
        "-device", _iommu_device(info, nested=False),
        "-drive", f"if=none,id=root,file={spec.rootfs},format=raw,snapshot=on",
        "-device", f"virtio-blk-pci-non-transitional,drive=root,{BLK_OPTS},addr={SLOT_DISK:#x}",
        "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
        "-device", f"virtio-net-pci-non-transitional,netdev=net0,iommu_platform=on,addr={SLOT_NET:#x}",
        "-device", f"virtio-rng-pci-non-transitional,iommu_platform=on,addr={SLOT_RNG:#x}",
        # edu clamps DMA addresses to dma_mask (28 bits by default): widen it so
        # IOVA == process virtual address works.
        "-device", f"edu,dma_mask=0xffffffffffffffff,addr={SLOT_EDU:#x}",
    ]
    if spec.cache_disk is not None:
        argv += [
            "-drive", f"if=none,id=cache,file={spec.cache_disk},format=raw",
            "-device", f"virtio-blk-pci-non-transitional,drive=cache,{BLK_OPTS},addr={SLOT_CACHE:#x}",
        ]
    if info.has_device("iommu-testdev"):
        argv += ["-device", "iommu-testdev"]
    if info.has_device(SVA_DEVICE):
        # svmval's QEMU (host_setup/qemu_build): the device that shares a guest process's
        # address space through a PASID, with ATS, page requests and device-TLB
        # invalidations. Test-only properties (x-seed-*) come only through extra_args.
        argv += ["-device", f"{SVA_DEVICE},addr={SLOT_SVA:#x}"]
    return argv + list(spec.extra_args)


def lab_nested(spec: VmSpec, info: QemuInfo, *, with_vfio: bool = True) -> list[str]:
    """The lab command line; `with_vfio=False` leaves out iommufd + vfio-pci so the
    rest can be validated on a machine without the device."""
    _check_files(spec, spec.kernel, spec.initrd, spec.rootfs)
    if spec.device is None or not _BDF.match(spec.device):
        raise ConfigError(
            f"lab-nested needs the inventory's 'device' as a PCI address like 0000:6a:01.0, got {spec.device!r}"
        )
    if not spec.hugepage_ram:
        raise ConfigError("lab-nested keeps guest RAM on hugepages: build its VmSpec with hugepage_ram=True")
    argv = _common(spec, info)
    ram = spec.ram_path
    argv += [
        "-machine", "q35,kernel-irqchip=split",
        "-accel", "kvm",
        "-cpu", "host,-la57",
        "-object",
        f"memory-backend-file,id=ram0,size={spec.memory_mib}M,mem-path={ram},share=on,prealloc=on",
        "-device", _iommu_device(info, nested=True),
        "-drive", f"if=none,id=root,file={spec.rootfs},format=raw,snapshot=on",
        "-device", f"virtio-blk-pci-non-transitional,drive=root,{BLK_OPTS},addr={SLOT_DISK:#x}",
        "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
        "-device", f"virtio-net-pci-non-transitional,netdev=net0,iommu_platform=on,addr={SLOT_NET:#x}",
        # The assigned device sits on its own root port: upstream refuses it behind a bridge.
        "-device", "pcie-root-port,id=rp0,chassis=1,slot=1",
    ]
    if with_vfio:
        argv += [
            "-object", "iommufd,id=iommufd0",
            "-device", f"vfio-pci,host={spec.device},iommufd=iommufd0,bus=rp0",
        ]
    return argv + list(spec.extra_args)


def build_argv(profile: Profile, spec: VmSpec, info: QemuInfo) -> list[str]:
    if profile is Profile.LOCAL_EMULATED:
        return local_emulated(spec, info)
    return lab_nested(spec, info)
