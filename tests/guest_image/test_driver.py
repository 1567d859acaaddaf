"""The guest driver svmval_sva: its cache key, vermagic checks, and (slow) the real build
against the resolved kernel's headers, the image carrying it, and the guest loading it."""

from __future__ import annotations

import lzma
import shutil
import subprocess
from pathlib import Path

import pytest
from smoke_boot import boot, run, ssh_connect  # tests/guest_image/ is on sys.path (rootdir-less)

from guest_image import digest, driver, recipe
from guest_image.build import GuestImage, current_resolution, ensure_image
from guest_image.rootfs import ImageBuildError

KERNEL = "6.12.117+deb13-amd64"
VERSIONS = {f"linux-image-{KERNEL}": "6.12.117-1", "linux-image-amd64": "6.12.117-1", "gcc-14-base": "14.2.0-19"}


def test_the_digest_covers_the_driver_sources_and_its_builder() -> None:
    names = {p.relative_to(digest.HERE).as_posix() for p in digest.build_sources()}
    assert {"driver.py", "driver/svmval_sva.c", "driver/svmval_sva.h", "driver/Kbuild"} <= names


def test_editing_the_driver_changes_the_image_digest(tmp_path: Path) -> None:
    base = tmp_path / "guest_image"
    shutil.copytree(digest.HERE, base, ignore=shutil.ignore_patterns("__pycache__"))

    def key() -> str:
        return digest.compute_digest(digest.build_sources(base), "trixie", recipe.PACKAGES, VERSIONS, base)

    before = key()
    with open(base / "driver" / "svmval_sva.c", "a") as fh:
        fh.write("/* edited */\n")
    assert key() != before


def test_module_key_follows_kernel_compiler_and_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = driver.module_key(KERNEL, VERSIONS)
    assert driver.module_key(KERNEL, dict(VERSIONS)) == base
    assert driver.module_key(KERNEL, {**VERSIONS, f"linux-image-{KERNEL}": "6.12.117-2"}) != base
    assert driver.module_key(KERNEL, {**VERSIONS, "gcc-14-base": "14.2.0-20"}) != base
    assert driver.module_key("6.12.118+deb13-amd64", VERSIONS) != base
    # An unrelated package moving (python3, PoCL) keeps the cached .ko.
    assert driver.module_key(KERNEL, {**VERSIONS, "python3": "3.13.6-1"}) == base
    src = tmp_path / "driver"
    shutil.copytree(driver.DRIVER_DIR, src)
    (src / "Kbuild").write_text((src / "Kbuild").read_text() + "# edited\n")
    monkeypatch.setattr(driver, "DRIVER_DIR", src)
    monkeypatch.setattr(driver, "driver_sources", lambda base=src: [base / n for n in driver.SOURCES])
    assert driver.module_key(KERNEL, VERSIONS) != base


def test_kernel_release_comes_from_the_resolution() -> None:
    assert driver.kernel_release_of(VERSIONS) == KERNEL
    with pytest.raises(ImageBuildError, match="one linux-image"):
        driver.kernel_release_of({"linux-image-amd64": "1"})


def fake_ko(path: Path, magic: str) -> Path:
    path.write_bytes(b"\x7fELF...\0license=GPL\0vermagic=" + magic.encode() + b"\0name=svmval_sva\0")
    return path


def test_vermagic_is_read_and_checked(tmp_path: Path) -> None:
    ko = fake_ko(tmp_path / "a.ko", f"{KERNEL} SMP preempt mod_unload modversions ")
    assert driver.vermagic(ko).startswith(KERNEL + " SMP")
    assert driver.check_vermagic(ko, KERNEL)
    assert driver.modinfo(ko)["license"] == "GPL"
    with pytest.raises(ImageBuildError, match="built for '6.1.0-9-amd64'"):
        driver.check_vermagic(fake_ko(tmp_path / "b.ko", "6.1.0-9-amd64 SMP"), KERNEL)
    (tmp_path / "c.ko").write_bytes(b"not a module")
    with pytest.raises(ImageBuildError, match="no vermagic"):
        driver.vermagic(tmp_path / "c.ko")


def test_the_init_loads_the_driver_after_the_stock_modules() -> None:
    assert recipe.OWN_MODULES == ("svmval_sva",)
    assert not set(recipe.OWN_MODULES) & set(recipe.GUEST_MODULES)


# -- slow: the real thing ---------------------------------------------------------


def _stock_vermagic(root_or_image: Path, release: str, *, image: bool) -> str:
    """vermagic of one of the kernel's own modules (ext4), from a root or an image."""
    rel = f"lib/modules/{release}/kernel/fs/ext4/ext4.ko.xz"
    if image:
        raw = subprocess.run(["debugfs", "-R", f"cat /{rel}", str(root_or_image)],
                             capture_output=True, check=True).stdout
    else:
        raw = (root_or_image / rel).read_bytes()
    data = lzma.decompress(raw)
    at = data.index(b"vermagic=")
    return data[at + 9 : data.index(b"\0", at)].decode()


def _debugfs_cat(image: Path, path: str) -> bytes:
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return ensure_image()


@pytest.mark.slow
def test_the_module_builds_against_the_resolved_kernels_headers(image: GuestImage, tmp_path: Path) -> None:
    """A fresh build (not the cache) in a root unpacked from the image: the root comes back
    unchanged, the .ko's vermagic equals that of the kernel's own modules."""
    resolution = current_resolution()
    release = driver.kernel_release_of(resolution.versions)
    assert release == image.manifest["kernel"]
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {root}", str(image.rootfs)], capture_output=True, check=True)
    dpkg_before = (root / "var/lib/dpkg/status").read_bytes()
    log = tmp_path / "build.log"
    built = driver.build_in_root(root, release, resolution.versions, log, tmp_path / "debs")
    ko = built["ko"]
    assert driver.vermagic(ko) == _stock_vermagic(root, release, image=False)
    assert built["tools"][f"linux-headers-{release}"] == resolution.versions[f"linux-image-{release}"]
    assert built["tools"]["gcc-14-base"] == resolution.versions["gcc-14-base"]
    assert (root / "var/lib/dpkg/status").read_bytes() == dpkg_before, "the overlay leaked into the root"
    assert not (root / f"usr/src/linux-headers-{release}").exists()
    info = driver.modinfo(ko)
    assert info["alias"] == "pci:v00001234d00005356sv*sd*bc*sc*i*"
    assert info["license"] == "GPL"
    assert ko.stat().st_size < 100_000, "debug info left in: strip failed"


@pytest.mark.slow
def test_the_image_carries_the_module(image: GuestImage) -> None:
    release = image.manifest["kernel"]
    ko = _debugfs_cat(image.rootfs, f"/lib/modules/{release}/extra/svmval_sva.ko")
    assert ko.startswith(b"\x7fELF")
    at = ko.index(b"vermagic=")
    assert ko[at + 9 : ko.index(b"\0", at)].decode() == _stock_vermagic(image.rootfs, release, image=True)
    cached = driver.built_module(release, current_resolution().versions)
    assert cached is not None and cached.read_bytes() == ko
    deps = _debugfs_cat(image.rootfs, f"/lib/modules/{release}/modules.dep").decode()
    assert any(line.startswith("extra/svmval_sva.ko:") for line in deps.splitlines())
    alias = _debugfs_cat(image.rootfs, f"/lib/modules/{release}/modules.alias").decode()
    assert "alias pci:v00001234d00005356sv*sd*bc*sc*i* svmval_sva" in alias
    assert _debugfs_cat(image.rootfs, "/etc/svmval/modules").decode().split()[-1] == "svmval_sva"
    assert image.manifest["driver"]["vermagic"].startswith(release + " ")


@pytest.mark.slow
def test_the_guest_loads_it_unsigned_and_tainted(image: GuestImage, tmp_path: Path) -> None:
    """Debian's kernel takes unsigned modules (no MODULE_SIG_FORCE) and taints itself;
    without the device the driver stays idle: no /dev/svmval-sva0."""
    with boot(image.kernel, image.initrd, image.rootfs, image.cmdline, tmp_path) as vm:
        vm.wait_for(rf"{recipe.READY_MARKER} ([0-9.]+)", timeout=240)
        client = ssh_connect(vm.port, image.ssh_key, image.host_key_pub, timeout=60)
        try:
            code, out, err = run(client, "grep ^svmval_sva /proc/modules; cat /proc/sys/kernel/tainted; dmesg")
        finally:
            client.close()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("svmval_sva ")
    taint = int(lines[1])
    assert taint & (1 << 12) and taint & (1 << 13), f"taint {taint}: expected O (out of tree) and E (unsigned)"
    assert "svmval_sva: module verification failed: signature and/or required key missing" in out
    assert "svmval_sva 0000:" not in out  # no device bound: nothing probed
