"""The initramfs: what the cpio holds, built from a module tree like the kernel's."""

from __future__ import annotations

import gzip
import lzma
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from guest_image import initramfs
from guest_image.initramfs import build_initramfs, list_initramfs
from harness.errors import ConfigError

FILES = Path(initramfs.__file__).resolve().parent / "files"

# Distinct bytes per module, so a mix-up between files shows.
PAYLOADS = {
    "kernel/lib/crc16.ko.xz": b"\x7fELF crc16 " * 50,
    "kernel/fs/mbcache.ko.zst": b"\x7fELF mbcache " * 50,
    "kernel/fs/jbd2/jbd2.ko.gz": b"\x7fELF jbd2 " * 50,
    "kernel/fs/ext4/ext4.ko": b"\x7fELF ext4 " * 50,
    "kernel/drivers/block/virtio_blk.ko.xz": b"\x7fELF virtio_blk " * 50,
    "kernel/drivers/net/unrelated.ko.xz": b"\x7fELF unrelated " * 50,
}
MODULES_DEP = """\
kernel/lib/crc16.ko.xz:
kernel/fs/mbcache.ko.zst:
kernel/fs/jbd2/jbd2.ko.gz:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.zst kernel/fs/jbd2/jbd2.ko.gz
kernel/drivers/block/virtio_blk.ko.xz:
kernel/drivers/net/unrelated.ko.xz:
"""


def compress(path: str, data: bytes) -> bytes:
    if path.endswith(".xz"):
        return lzma.compress(data, format=lzma.FORMAT_XZ)
    if path.endswith(".gz"):
        return gzip.compress(data)
    if path.endswith(".zst"):
        return subprocess.run(
            ["zstd", "-q", "-c"], input=data, capture_output=True, check=True
        ).stdout
    return data


@pytest.fixture
def module_dir(tmp_path: Path) -> Path:
    d = tmp_path / "lib" / "modules" / "6.12.0-test"
    for rel, data in PAYLOADS.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(compress(rel, data))
    (d / "modules.dep").write_text(MODULES_DEP)
    (d / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    return d


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd not installed")
def test_cpio_holds_init_busybox_and_only_the_needed_modules_decompressed(
    module_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "initrd.img"
    loaded = build_initramfs(module_dir, ("virtio_blk", "ext4", "virtio_pci"), out)
    assert out.read_bytes()[:2] == b"\x1f\x8b"  # gzip, which every kernel can unpack

    members = list_initramfs(out)
    init = members["init"]
    assert init.data == (FILES / "initramfs-init").read_bytes()
    assert stat.S_ISREG(init.mode) and init.mode & 0o111 == 0o111
    assert members["bin/busybox"].data == Path("/bin/busybox").read_bytes()
    for d in ("proc", "sys", "dev", "newroot"):
        assert stat.S_ISDIR(members[d].mode), d

    mods = {n.removeprefix("lib/modules/"): m.data for n, m in members.items() if n.endswith(".ko")}
    assert set(mods) == {"virtio_blk.ko", "crc16.ko", "mbcache.ko", "jbd2.ko", "ext4.ko"}
    for rel, data in PAYLOADS.items():
        name = initramfs.module_name(rel) + ".ko"
        if name in mods:
            assert mods[name] == data, f"{name} not decompressed correctly"

    order = members["modules.order"].data.decode().split()
    assert order == loaded
    assert order.index("ext4.ko") > max(
        order.index(m) for m in ("crc16.ko", "mbcache.ko", "jbd2.ko")
    )


def test_the_init_script_uses_only_what_the_cpio_provides() -> None:
    """/init runs before any root: every file it reads must come from the cpio or the kernel."""
    script = (FILES / "initramfs-init").read_text()
    assert script.startswith("#!/bin/busybox sh\n")
    assert "/modules.order" in script and "/lib/modules/$m" in script
    assert "switch_root /newroot" in script
    assert "svmval.init=" in script  # the override the README documents


def test_a_recipe_typo_fails_before_any_file_is_written(module_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "initrd.img"
    with pytest.raises(ConfigError, match="ext5"):
        build_initramfs(module_dir, ("ext5",), out)
    assert not out.exists()


def test_same_inputs_give_the_same_initramfs_bytes(module_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    build_initramfs(module_dir, ("ext4",), a)
    build_initramfs(module_dir, ("ext4",), b)
    assert a.read_bytes() == b.read_bytes()
