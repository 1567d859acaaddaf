"""Build the guest image offline from Debian packages, cached by content.

The image is the Debian kernel (installed into the root by debootstrap, copied
out), a busybox initramfs that mounts the root, and an ext4 root made with
`mke2fs -d` (no loop mount), plus per-image SSH keys.  Nothing is installed on the
host.

Cache: `cache_dir()/images/<digest>/`, digest = sha256 of the builder's sources,
the suite, the package list and every resolved package version (digest.py,
resolve.py).  A build goes to a temporary directory beside it and is renamed into
place, under a per-digest lock: readers see a whole image or none, and a second
builder waits and then reuses the first one's result.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guest_image import driver, initramfs, recipe, rootfs
from guest_image.digest import build_sources, compute_digest
from guest_image.resolve import Resolution, ResolveError, resolve, resolve_kernel
from guest_image.rootfs import ImageBuildError
from harness.paths import cache_dir, cache_lock

Progress = Callable[[str], None]
IMAGE_FILES = ("vmlinuz", "initrd.img", "rootfs.img")

__all__ = [
    "GuestImage",
    "ImageBuildError",
    "cached_image",
    "ensure_image",
    "images_dir",
    "recipe_digest",
]


@dataclass(frozen=True)
class GuestImage:
    digest: str
    dir: Path
    kernel: Path
    initrd: Path
    rootfs: Path  # ext4; attach with snapshot=on (the image is shared by all runs)
    ssh_key: Path  # private key for root in the guest (0600)
    host_key_pub: Path  # the guest's SSH host key, for known_hosts verification
    cmdline: str
    manifest: dict[str, Any]


def images_dir() -> Path:
    d = cache_dir() / "images"
    d.mkdir(parents=True, exist_ok=True)
    return d


def current_resolution(say: Progress = lambda _m: None) -> Resolution:
    """The suite's package set, plus the kernel packages from recipe.KERNEL_SUITE."""
    base = resolve(recipe.SUITE, recipe.PACKAGES, images_dir() / "resolutions", say=say)
    kernel = resolve_kernel(recipe.KERNEL_SUITE, recipe.KERNEL_PACKAGE, images_dir() / "resolutions",
                            mirror=base.mirror, say=say)
    return dataclasses.replace(base, versions=dict(sorted({**base.versions, **kernel}.items())))


def recipe_digest(resolution: Resolution | None = None) -> str:
    """The digest an image built now would have (resolves versions if not given)."""
    res = resolution or current_resolution()
    return compute_digest(build_sources(), recipe.SUITE, recipe.PACKAGES, res.versions)


def _image_from_dir(d: Path) -> GuestImage:
    manifest = json.loads((d / "manifest.json").read_text())
    return GuestImage(
        digest=manifest["digest"],
        dir=d,
        kernel=d / "vmlinuz",
        initrd=d / "initrd.img",
        rootfs=d / "rootfs.img",
        ssh_key=d / "id_ed25519",
        host_key_pub=d / "ssh_host_ed25519_key.pub",
        cmdline=manifest["cmdline"],
        manifest=manifest,
    )


def cached_image(progress: Progress | None = None) -> GuestImage | None:
    """The image for the current recipe and package versions, if already built.

    None also when the versions cannot be known (mirror unreachable and nothing
    resolved before): then nothing can be cached either, and ensure_image() says why.
    """
    try:
        resolution = current_resolution(progress or (lambda _m: None))
    except ResolveError:
        return None
    d = images_dir() / recipe_digest(resolution)
    return _image_from_dir(d) if (d / "manifest.json").exists() else None


def ensure_image(progress: Progress | None = None, *, force: bool = False) -> GuestImage:
    """The cached image for the current recipe, built first if missing (or if `force`)."""
    say = progress or (lambda _msg: None)
    resolution = current_resolution(say)
    digest = recipe_digest(resolution)
    final = images_dir() / digest
    if (final / "manifest.json").exists() and not force:  # fast path: no lock needed to read
        say(f"guest image {digest[:12]} cached")
        return _image_from_dir(final)
    with cache_lock(images_dir() / f"{digest}.lock"):
        if (final / "manifest.json").exists() and not force:
            say(f"guest image {digest[:12]} built meanwhile by another builder")
            return _image_from_dir(final)
        # Under the lock nobody else builds this digest: leftovers are from a crash.
        for stale in images_dir().glob(f"build-{digest[:12]}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f"build-{digest[:12]}-", dir=images_dir()))
        try:
            _build(work, digest, resolution, say)
            if final.exists():  # --force: the old image goes only once the new one is whole
                old = final.with_name(f"old-{digest[:12]}-{time.time_ns()}")
                final.rename(old)
                work.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                work.rename(final)  # atomic: readers see a whole image or none
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return _image_from_dir(final)


def _build(work: Path, digest: str, resolution: Resolution, say: Progress) -> None:
    rootfs.check_host()
    t0 = time.monotonic()
    log = work / "build.log"
    root = work / "root"
    timings: dict[str, float] = {}

    say(f"debootstrap {recipe.SUITE}: {len(resolution.versions)} packages (about 1.5 minutes)")
    rootfs.debootstrap(root, resolution.mirror, cache_dir() / "debs" / recipe.SUITE, log)
    timings["debootstrap_s"] = time.monotonic() - t0
    say(f"the kernel from {recipe.KERNEL_SUITE}")
    t_k = time.monotonic()
    rootfs.install_kernel(root, resolution.mirror, cache_dir() / "debs" / recipe.KERNEL_SUITE, log)
    timings["kernel_s"] = time.monotonic() - t_k

    installed = rootfs.installed_versions(root)
    drift = {
        p: (v, installed.get(p)) for p, v in resolution.versions.items() if installed.get(p) != v
    }
    if drift and not resolution.offline:
        sample = ", ".join(f"{p} {a} -> {b}" for p, (a, b) in list(drift.items())[:5])
        raise ImageBuildError(
            f"the mirror {resolution.mirror} changed during the build ({sample}): "
            f"run the build again"
        )

    say("configuring the root: init, sshd, per-image SSH keys")
    t1 = time.monotonic()
    release = rootfs.kernel_release(root)
    rootfs.configure(root, work)
    shutil.copy2(root / "boot" / f"vmlinuz-{release}", work / "vmlinuz")
    say("initramfs: busybox + the modules that mount the root")
    modules = initramfs.build_initramfs(
        root / "lib" / "modules" / release, recipe.INITRAMFS_MODULES, work / "initrd.img"
    )
    timings["configure_s"] = time.monotonic() - t1
    t_mod = time.monotonic()
    module = driver.ensure_module(root, release, resolution.versions, log, say)
    timings["driver_s"] = time.monotonic() - t_mod
    rootfs.drop_kernel_suite(root)  # the driver's headers came from it; the image needs no apt source
    rootfs.prune(root, release, log)  # its depmod indexes the driver too

    say("ext4 root filesystem (mke2fs -d)")
    t2 = time.monotonic()
    tree = rootfs.tree_bytes(root)
    fs_mib = rootfs.make_ext4(root, work / "rootfs.img", log)
    timings["mke2fs_s"] = time.monotonic() - t2
    shutil.rmtree(root)

    reported = {p: installed[p] for p in rootfs.REPORTED_PACKAGES if p in installed}
    reported.update({p: v for p, v in installed.items() if p.startswith("linux-image-")})
    manifest = {
        "digest": digest,
        "suite": recipe.SUITE,
        "mirror": resolution.mirror,
        "index": {
            "release_date": resolution.release_date,
            "packages_xz_sha256": resolution.index_sha256,
        },
        "kernel": release,
        "cmdline": recipe.KERNEL_CMDLINE,
        "init": recipe.GUEST_INIT,
        "ready_marker": recipe.READY_MARKER,
        "initramfs_modules": modules,
        "guest_modules": list(recipe.GUEST_MODULES + recipe.OWN_MODULES),
        "driver": module,
        "packages": reported,
        "all_packages": installed,
        "sizes": {name: (work / name).stat().st_size for name in IMAGE_FILES},
        "allocated": {name: (work / name).stat().st_blocks * 512 for name in IMAGE_FILES},
        "rootfs_mib": fs_mib,
        "root_tree_bytes": tree,
        "build_s": round(time.monotonic() - t0, 1),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    say(f"guest image {digest[:12]} built in {manifest['build_s']} s")
