"""What the guest is made of. Changing anything here changes the image digest."""

from __future__ import annotations

# trixie's PoCL 6.0 reports fine-grain SYSTEM SVM (caps 15), bookworm's 3.1 does not
# (docs/FIELD_NOTES.md); its 6.12 kernel behaves like bookworm-backports' for the IOMMU.
SUITE = "trixie"

PACKAGES = (
    "python3",
    "python3-numpy",
    "python3-pyopencl",
    "pocl-opencl-icd",
    "ocl-icd-libopencl1",
    "clinfo",
    "binutils",  # PoCL links kernels with ld; without it the first launch fails
    "kmod",
    "pciutils",
    "openssh-server",
    "iproute2",
    "e2fsprogs",
)

# The guest kernel, from trixie-backports: trixie's own 6.12.117 carries the x86 stable
# stopgap for CVE-2025-71089 ("iommu: disable SVA when CONFIG_X86 is set"), so every
# iommu_sva_bind_device fails there (measured in svmval's guest); backports' 7.x binds.
KERNEL_SUITE = "trixie-backports"
KERNEL_PACKAGE = "linux-image-amd64"

# Kernel modules loaded by the guest's init (the rest load on demand via modprobe).
GUEST_MODULES = (
    "virtio_net",
    "virtio_rng",
    "vfio",
    "vfio_iommu_type1",
    "vfio_pci",
)

# svmval's own modules (guest_image/driver/, built against the guest kernel at image
# build time, installed in /lib/modules/<release>/extra/), loaded by init after those.
OWN_MODULES = ("svmval_sva",)

# Modules the initramfs needs to mount the root: virtio-blk disk, ext4.
# (7.x has crc32c in its library core: no crc32c_generic module to load, as 6.12 needed.)
INITRAMFS_MODULES = ("virtio_blk", "ext4")

# Kernel drivers nobody in this guest needs; dropped to keep the image small.
PRUNED_MODULE_DIRS = (
    "kernel/drivers/gpu",
    "kernel/drivers/media",
    "kernel/drivers/net/wireless",
    "kernel/drivers/net/ethernet",
    "kernel/drivers/infiniband",
    "kernel/drivers/staging",
    "kernel/drivers/scsi",
    "kernel/drivers/usb",
    "kernel/drivers/bluetooth",
    "kernel/drivers/hid",
    "kernel/drivers/input",
    "kernel/drivers/iio",
    "kernel/sound",
    "kernel/net/wireless",
    "kernel/net/mac80211",
    "kernel/net/bluetooth",
    "kernel/fs/btrfs",
    "kernel/fs/xfs",
    "kernel/fs/ocfs2",
    "kernel/fs/nfs",
    "kernel/fs/smb",
)

# intel_iommu=on,sm_on: scalable mode; iommu.strict=1: every unmap is invalidated at
# once (the QI traffic the checks judge); no5lvl: 5-level CPU paging makes Linux
# refuse SVM with a 4-level first stage ("incompatible paging mode").
# rdinit=/init: our busybox initramfs; panic=-1 with QEMU's -no-reboot ends a broken
# boot at once instead of hanging; net.ifnames=0 keeps the NIC named eth0 for init.
KERNEL_CMDLINE = (
    "console=ttyS0 intel_iommu=on,sm_on iommu.strict=1 no5lvl "
    "rdinit=/init panic=-1 loglevel=6 net.ifnames=0"
)

# The guest's init prints this (then its uptime in seconds) once sshd listens.
READY_MARKER = "SVMVAL-GUEST-READY"
# ... or this, with the reason, when it cannot get there (the console shows why).
FAILED_MARKER = "SVMVAL-GUEST-FAILED"

# The init the initramfs hands over to (`svmval.init=PATH` on the cmdline overrides it,
# e.g. /lib/systemd/systemd: measured 15.6 s to SSH under TCG against 5.1 s for ours).
GUEST_INIT = "/sbin/svmval-init"

# Where the harness uploads the workloads package in the guest.
GUEST_WORKDIR = "/opt/svmval"
CACHE_LABEL = "svmcache"  # an optional second virtio disk, mounted at POCL_CACHE_DIR
POCL_CACHE_DIR = "/var/cache/pocl"
