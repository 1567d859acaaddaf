"""The built image boots under the emulated VT-d and answers over SSH (slow: builds or
reuses the image, boots QEMU 10 under TCG, ~10 s per boot once built)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import paramiko
import pytest
from smoke_boot import boot, run, ssh_connect  # tests/guest_image/ is on sys.path (rootdir-less)

from guest_image import recipe
from guest_image.build import GuestImage, ensure_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return ensure_image()


def test_image_files_and_keys(image: GuestImage) -> None:
    for path in (image.kernel, image.initrd, image.rootfs, image.ssh_key, image.host_key_pub):
        assert path.is_file() and path.stat().st_size > 0, path
    assert image.ssh_key.stat().st_mode & 0o077 == 0, "the private key must be 0600"
    assert image.host_key_pub.read_text().startswith("ssh-ed25519 ")
    assert image.cmdline.startswith("console=ttyS0 intel_iommu=on,sm_on iommu.strict=1 no5lvl")
    assert image.manifest["packages"]["pocl-opencl-icd"].startswith("6.")
    out = subprocess.run(
        ["dumpe2fs", "-h", str(image.rootfs)], capture_output=True, text=True, check=True
    )
    assert re.search(r"Filesystem volume name:\s+svmroot", out.stdout)


def test_boots_through_the_viommu_and_runs_pyopencl_over_verified_ssh(
    image: GuestImage, tmp_path: Path
) -> None:
    with boot(image.kernel, image.initrd, image.rootfs, image.cmdline, tmp_path) as vm:
        m = vm.wait_for(rf"{recipe.READY_MARKER} ([0-9.]+)", timeout=240)
        client = ssh_connect(vm.port, image.ssh_key, image.host_key_pub, timeout=60)
        ready_s = time.monotonic() - vm.started
        try:
            code, out, err = run(
                client, "python3 -c 'import pyopencl, sys; print(pyopencl.VERSION)'"
            )
            assert code == 0, err
            assert out.strip().startswith("(")
            # No workloads baked in: the harness uploads them here at run time.
            code, out, _ = run(
                client, f"test -d {recipe.GUEST_WORKDIR} && ls -A {recipe.GUEST_WORKDIR} | wc -l"
            )
            assert code == 0 and out.strip() == "0"
            code, out, _ = run(client, "echo $POCL_CACHE_DIR")
            assert out.strip() == recipe.POCL_CACHE_DIR
            # The disk and the NIC sit behind the emulated VT-d in DMA-translated groups.
            code, out, err = run(
                client,
                "set -e; ls /sys/class/iommu; "
                "cat /sys/block/vda/device/../iommu_group/type; "
                "cat /sys/class/net/eth0/device/../iommu_group/type; "
                "dmesg | grep -c 'Using Queued invalidation'",
            )
            assert code == 0, err
            lines = out.split()
            assert lines[0].startswith("dmar"), out
            assert lines[1:3] == ["DMA", "DMA"], out  # iommu.strict=1: not DMA-FQ, not identity
            assert int(lines[3]) >= 1
        finally:
            client.close()
        print(
            f"guest uptime at ready marker {m[1]} s; "
            f"SSH answered {ready_s:.1f} s after QEMU started"
        )

        # The host key is checked, not trusted: a different key is refused.
        wrong = tmp_path / "wrong.pub"
        key = paramiko.Ed25519Key.from_private_key_file(str(image.ssh_key))
        wrong.write_text(f"ssh-ed25519 {key.get_base64()}\n")
        with pytest.raises(paramiko.BadHostKeyException):
            ssh_connect(vm.port, image.ssh_key, wrong, timeout=30)
        # And nobody gets in without the image's key.
        other = tmp_path / "other_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True
        )
        with pytest.raises(AssertionError, match="no SSH"):
            ssh_connect(vm.port, other, image.host_key_pub, timeout=8)
    assert "SVMVAL-GUEST-FAILED" not in vm.console_text()


def test_svmcache_disk_is_mounted_for_pocl(image: GuestImage, tmp_path: Path) -> None:
    disk = tmp_path / "cache.img"
    subprocess.run(
        ["mke2fs", "-q", "-t", "ext4", "-L", recipe.CACHE_LABEL, str(disk), "64M"],
        check=True,
        capture_output=True,
    )
    extra = [
        "-drive",
        f"if=none,id=cache,file={disk},format=raw",
        "-device",
        "virtio-blk-pci-non-transitional,drive=cache,iommu_platform=on",
    ]
    with boot(image.kernel, image.initrd, image.rootfs, image.cmdline, tmp_path, extra=extra) as vm:
        vm.wait_for(recipe.READY_MARKER, timeout=240)
        assert "pocl cache on /dev/vdb" in vm.console_text()
        client = ssh_connect(vm.port, image.ssh_key, image.host_key_pub, timeout=60)
        try:
            code, out, err = run(
                client,
                f"findmnt -n -o SOURCE,FSTYPE {recipe.POCL_CACHE_DIR} && "
                f"echo kept > {recipe.POCL_CACHE_DIR}/probe && sync",
            )
            assert code == 0, err
            assert out.split() == ["/dev/vdb", "ext4"]
        finally:
            client.close()
    # The write went to the persistent disk (not to a snapshot): it is there after power-off.
    probe = subprocess.run(
        ["debugfs", "-R", "cat /probe", str(disk)], capture_output=True, text=True, check=True
    )
    assert probe.stdout.strip() == "kept"
