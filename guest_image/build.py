"""Build the guest image offline from Debian packages, cached by content.

The image is: the Debian kernel (installed into the root by debootstrap, copied
out), a busybox initramfs that mounts the root, and an ext4 root made with
`mke2fs -d` (no loop mount).  Nothing is installed on the host.

The cache key is the recipe (recipe.py, the guest's files, this builder's own
source): the same recipe gives the same digest; the package versions debootstrap
resolved are recorded in manifest.json, because the suite moves on between builds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guest_image import initramfs, recipe
from harness.errors import EnvironmentBroken
from harness.paths import cache_dir

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"
Progress = Callable[[str], None]


class ImageBuildError(EnvironmentBroken):
    pass


@dataclass(frozen=True)
class GuestImage:
    digest: str
    dir: Path
    kernel: Path
    initrd: Path
    rootfs: Path
    ssh_key: Path  # private key for root in the guest
    host_key_pub: Path  # the guest's SSH host key, for known_hosts verification
    cmdline: str
    manifest: dict[str, Any]


def recipe_digest() -> str:
    """sha256 over everything that decides the image's contents."""
    h = hashlib.sha256()
    sources = [HERE / "recipe.py", HERE / "build.py", HERE / "initramfs.py", *sorted(FILES.iterdir())]
    for path in sources:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def images_dir() -> Path:
    d = cache_dir() / "images"
    d.mkdir(parents=True, exist_ok=True)
    return d


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


def cached_image() -> GuestImage | None:
    d = images_dir() / recipe_digest()
    return _image_from_dir(d) if (d / "manifest.json").exists() else None


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # a second builder waits, then reuses the result
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_image(progress: Progress | None = None, *, force: bool = False) -> GuestImage:
    """The cached image for the current recipe, built first if missing."""
    say = progress or (lambda _msg: None)
    digest = recipe_digest()
    final = images_dir() / digest
    with _lock(images_dir() / f"{digest}.lock"):
        if (final / "manifest.json").exists() and not force:
            say(f"guest image {digest[:12]} cached")
            return _image_from_dir(final)
        if final.exists():
            shutil.rmtree(final)
        work = Path(tempfile.mkdtemp(prefix=f"build-{digest[:12]}-", dir=images_dir()))
        try:
            _build(work, digest, say)
            work.rename(final)  # atomic: readers see a whole image or none
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return _image_from_dir(final)


def _run(argv: list[str], what: str, log: Path, **kw: Any) -> None:
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(argv)}\n".encode())
        fh.flush()
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, check=False, **kw)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise ImageBuildError(
            f"{what} failed (exit {proc.returncode}); full log in {log}; last lines:\n  "
            + "\n  ".join(tail)
        )


def debian_mirror() -> str:
    """The host's own Debian mirror (the only package source reachable)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1].rstrip("/")
    return "http://deb.debian.org/debian"


def _build(work: Path, digest: str, say: Progress) -> None:
    for tool in ("debootstrap", "mke2fs", "ssh-keygen", "busybox", "cpio"):
        if shutil.which(tool) is None:
            raise ImageBuildError(f"{tool} is not installed; run `make bootstrap`")
    t0 = time.monotonic()
    log = work / "build.log"
    root = work / "root"
    timings: dict[str, float] = {}

    say(f"debootstrap {recipe.SUITE} ({len(recipe.PACKAGES)} packages) — about a minute")
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(recipe.PACKAGES)}",
            recipe.SUITE,
            str(root),
            debian_mirror(),
        ],
        "debootstrap",
        log,
    )
    timings["debootstrap_s"] = time.monotonic() - t0

    say("configuring the root: init, sshd, keys")
    versions = _package_versions(root, log)
    kernel_release = _configure_root(root, work)
    _prune(root, kernel_release, log)

    say("initramfs")
    t1 = time.monotonic()
    shutil.copy2(root / "boot" / f"vmlinuz-{kernel_release}", work / "vmlinuz")
    initramfs.build_initramfs(
        root / "lib" / "modules" / kernel_release, recipe.INITRAMFS_MODULES, work / "initrd.img"
    )
    timings["initramfs_s"] = time.monotonic() - t1

    say("ext4 root filesystem (mke2fs -d)")
    t2 = time.monotonic()
    used = _tree_size(root)
    size_mib = int(used * 1.25 / 2**20) + 256  # room for the run's files and logs
    _run(
        ["mke2fs", "-q", "-t", "ext4", "-L", "svmroot", "-d", str(root), str(work / "rootfs.img"), f"{size_mib}M"],
        "mke2fs",
        log,
    )
    timings["mke2fs_s"] = time.monotonic() - t2
    shutil.rmtree(root)

    manifest = {
        "digest": digest,
        "suite": recipe.SUITE,
        "kernel": kernel_release,
        "cmdline": recipe.KERNEL_CMDLINE,
        "packages": versions,
        "sizes": {
            name: (work / name).stat().st_size for name in ("vmlinuz", "initrd.img", "rootfs.img")
        },
        "root_tree_bytes": used,
        "build_s": round(time.monotonic() - t0, 1),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    say(f"guest image {digest[:12]} built in {manifest['build_s']} s")


def _package_versions(root: Path, log: Path) -> dict[str, str]:
    out = subprocess.run(
        ["chroot", str(root), "dpkg-query", "-W", "-f", "${Package}\t${Version}\n"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise ImageBuildError(f"dpkg-query in the new root failed: {out.stderr.strip()}")
    all_versions = dict(line.split("\t", 1) for line in out.stdout.splitlines() if "\t" in line)
    wanted = ("python3", "python3-numpy", "python3-pyopencl", "pocl-opencl-icd", "ocl-icd-libopencl1",
              "openssh-server", "libc6")
    versions = {p: all_versions[p] for p in wanted if p in all_versions}
    versions.update({p: v for p, v in all_versions.items() if p.startswith("linux-image-")})
    return versions


def _configure_root(root: Path, work: Path) -> str:
    releases = sorted(p.name for p in (root / "lib" / "modules").iterdir())
    if len(releases) != 1:
        raise ImageBuildError(f"expected one kernel in the root, found {releases}")
    release = releases[0]

    shutil.copy2(FILES / "svmval-init", root / "sbin" / "svmval-init")
    (root / "etc" / "svmval").mkdir(exist_ok=True)
    (root / "etc" / "svmval" / "modules").write_text("\n".join(recipe.GUEST_MODULES) + "\n")
    (root / "etc" / "hostname").write_text("svmval-guest\n")
    (root / "etc" / "environment").write_text(
        f"POCL_CACHE_DIR={recipe.POCL_CACHE_DIR}\nPYTHONDONTWRITEBYTECODE=1\n"
    )
    (root / "etc" / "fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    (root / recipe.GUEST_WORKDIR.lstrip("/")).mkdir(parents=True, exist_ok=True)

    # SSH: one ed25519 host key made here (its public half goes beside the image so
    # the harness verifies it), and a key for root; no passwords anywhere.
    ssh = root / "etc" / "ssh"
    for old in ssh.glob("ssh_host_*"):
        old.unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "svmval-guest", "-f", str(ssh / "ssh_host_ed25519_key")],
        check=True,
    )
    shutil.copy2(ssh / "ssh_host_ed25519_key.pub", work / "ssh_host_ed25519_key.pub")
    shutil.copy2(FILES / "sshd_config", ssh / "sshd_config")
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "svmval-harness", "-f", str(work / "id_ed25519")],
        check=True,
    )
    dot_ssh = root / "root" / ".ssh"
    dot_ssh.mkdir(mode=0o700, exist_ok=True)
    shutil.copy2(work / "id_ed25519.pub", dot_ssh / "authorized_keys")
    os.chmod(dot_ssh / "authorized_keys", 0o600)
    os.chmod(work / "id_ed25519", 0o600)
    return release


def _prune(root: Path, release: str, log: Path) -> None:
    for rel in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                "var/cache/apt/archives", "var/lib/apt/lists"):
        target = root / rel
        if target.exists():
            shutil.rmtree(target)
            target.mkdir()
    modules = root / "lib" / "modules" / release
    for rel in recipe.PRUNED_MODULE_DIRS:
        shutil.rmtree(modules / rel, ignore_errors=True)
    _run(["chroot", str(root), "depmod", "-a", release], "depmod", log)
    # The initramfs generator's output is not used (we build our own): drop it.
    for initrd in (root / "boot").glob("initrd.img-*"):
        initrd.unlink()


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return total
