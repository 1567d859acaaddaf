"""The guest's `svmval_sva` kernel module (driver/), built while the image is built.

The module must match the guest kernel exactly (vermagic, symbol versions), and
trixie's kernel was built with gcc-14, which the bookworm host lacks. So it is
built in the image's own root, seen through an overlayfs whose upper layer sits
on tmpfs and is thrown away: `apt-get install gcc-14 make linux-headers-<release>`
(the headers' exact-version dependency on linux-image-<release> is met by the root
itself), `make -C /usr/src/linux-headers-<release> M=...`, strip, copy the .ko out.
The root keeps no trace of the toolchain: the image grows by the .ko alone.

Measured on the project's 2-core machine: a separate minbase chroot would have to
install linux-image as well (the headers depend on it), pulling initramfs-tools
and systemd; installing into the root and purging again took 77 s (dpkg's fsyncs,
and autoremove kept libdw1t64); through the tmpfs overlay it takes ~14 s (apt
update 1.3 s, 14 packages 7.8 s, make 4.2 s).

The .ko is cached by its inputs (driver sources, this file, the kernel release and
version, gcc-14's version) in `cache_dir()/modules/<key>/`: an image rebuilt for
any other reason reuses it without apt (and so offline). The toolchain's .debs are
kept in `cache_dir()/debs/<suite>-driver`, so a module rebuild does not download
them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from guest_image import recipe
from guest_image.rootfs import ImageBuildError, add_kernel_suite, installed_versions, run_logged
from harness.paths import cache_dir

HERE = Path(__file__).resolve().parent
DRIVER_DIR = HERE / "driver"
MODULE = "svmval_sva"
SOURCES = ("svmval_sva.c", "svmval_sva.h", "Kbuild")
BUILD_DIR = "/tmp/svmval-driver"  # inside the root
COMPILER = "gcc-14"  # what trixie's 6.12 kernel was built with
Progress = Callable[[str], None]

APT = ("apt-get", "-q", "-y", "-o", "Acquire::Languages=none", "-o", "Dpkg::Use-Pty=0")
# dpkg fsyncs every file it unpacks: 61 MB of headers in small files. The root is a
# scratch tree until mke2fs, so a crash only loses a build that is redone anyway.
UNSAFE_IO = ("-o", "Dpkg::Options::=--force-unsafe-io")


def driver_sources(base: Path = DRIVER_DIR) -> list[Path]:
    return [base / name for name in SOURCES]


def build_packages(release: str) -> tuple[str, ...]:
    return (COMPILER, "make", f"linux-headers-{release}")


def module_key(release: str, versions: dict[str, str]) -> str:
    """The cache key of the built .ko: everything that decides its bytes."""
    h = hashlib.sha256()
    for path in (Path(__file__).resolve(), *driver_sources()):
        data = path.read_bytes()
        h.update(f"{path.name}:{len(data)}:".encode() + data)
    kernel = versions.get(f"linux-image-{release}", "")
    gcc = versions.get(f"{COMPILER}-base", "")
    h.update(f"release={release}\nkernel={kernel}\ngcc={gcc}\n".encode())
    return h.hexdigest()


def modules_dir() -> Path:
    d = cache_dir() / "modules"
    d.mkdir(parents=True, exist_ok=True)
    return d


def vermagic(ko: Path) -> str:
    """The `vermagic=` string of a module (its .modinfo section, read as bytes)."""
    data = ko.read_bytes()
    at = data.find(b"vermagic=")
    if at < 0:
        raise ImageBuildError(f"{ko} has no vermagic: not a kernel module")
    return data[at + len("vermagic=") : data.index(b"\0", at)].decode()


def check_vermagic(ko: Path, release: str) -> str:
    magic = vermagic(ko)
    if magic.split(" ", 1)[0] != release:
        raise ImageBuildError(f"{ko} was built for {magic.split(' ', 1)[0]!r}, the guest runs {release!r}")
    return magic


def _chroot(root: Path, argv: list[str] | tuple[str, ...], what: str, log: Path) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    run_logged(["chroot", str(root), *argv], what, log, env=env)


@contextmanager
def overlay(root: Path, scratch_parent: Path) -> Iterator[Path]:
    """`root` seen through an overlayfs whose upper layer is thrown away afterwards.

    Whatever apt and make write lands in the upper layer (on tmpfs when there is
    room: dpkg's fsyncs cost nothing there), so the root comes out byte for byte
    as it went in: nothing to purge, no package-set drift to check.
    """
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and shutil.disk_usage(shm).free > 1 << 30 else scratch_parent
    scratch = Path(tempfile.mkdtemp(prefix="svmval-driver-", dir=base))
    upper, work, merged = (scratch / n for n in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    opts = f"lowerdir={root},upperdir={upper},workdir={work}"
    proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        raise ImageBuildError(
            f"building {MODULE}.ko needs an overlay mount over the image root: {proc.stderr.strip()}"
        )
    proc_mounted = False
    try:
        # Newer kernels' objtool reads /proc/self (7.3's does; 6.12's does not).
        proc_mounted = subprocess.run(["mount", "-t", "proc", "proc", str(merged / "proc")],
                                      capture_output=True, check=False).returncode == 0
        yield merged
    finally:
        if proc_mounted:
            subprocess.run(["umount", str(merged / "proc")], check=False)
        subprocess.run(["umount", str(merged)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def build_in_root(root: Path, release: str, versions: dict[str, str], log: Path, debs: Path) -> dict[str, Any]:
    """Build the module in `root` (through an overlay: the root is left as it was) and
    copy it to BUILD_DIR/MODULE.ko in a scratch directory beside the log.

    Returns the .ko's path and the toolchain's versions, for the manifest.
    """
    packages = build_packages(release)
    debs.mkdir(parents=True, exist_ok=True)
    out = log.parent / f"{MODULE}-build"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    with overlay(root, log.parent) as merged:
        archives = merged / "var" / "cache" / "apt" / "archives"
        archives.mkdir(parents=True, exist_ok=True)
        for deb in debs.glob("*.deb"):  # apt checks each against the index, re-fetches a stale one
            shutil.copy2(deb, archives / deb.name)
        add_kernel_suite(merged)  # the kernel's headers live beside it, in recipe.KERNEL_SUITE
        _chroot(merged, [*APT, "update"], f"apt-get update in the image root ({recipe.SUITE})", log)
        _chroot(merged, [*APT, *UNSAFE_IO, "--no-install-recommends", "install", *packages],
                f"installing {' '.join(packages)} into the image root", log)
        installed = installed_versions(merged)
        added = sorted(set(installed) - set(installed_versions(root)))
        tools = {p: installed.get(p, "") for p in (*packages, f"{COMPILER}-base")}
        # The root came from a resolved index; apt just read the live one. They must agree.
        want = {f"{COMPILER}-base": versions.get(f"{COMPILER}-base"),
                f"linux-headers-{release}": versions.get(f"linux-image-{release}")}
        drift = {p: (v, tools.get(p)) for p, v in want.items() if v is not None and tools.get(p) != v}
        if drift:
            raise ImageBuildError(f"the mirror moved during the build (resolved -> installed: {drift}): run it again")
        for deb in archives.glob("*.deb"):
            if not (debs / deb.name).exists():
                shutil.copy2(deb, debs / deb.name)

        build = merged / BUILD_DIR.lstrip("/")
        build.mkdir(parents=True)
        for src in driver_sources():
            shutil.copy2(src, build / src.name)
        _chroot(merged, ["make", "-s", "-C", f"/usr/src/linux-headers-{release}", f"M={BUILD_DIR}", "modules"],
                f"building {MODULE}.ko against linux-headers-{release}", log)
        # Debian strips its modules too: 480 KB of DWARF would otherwise ship in the image.
        _chroot(merged, ["strip", "--strip-debug", f"{BUILD_DIR}/{MODULE}.ko"], f"strip {MODULE}.ko", log)
        shutil.copy2(build / f"{MODULE}.ko", out / f"{MODULE}.ko")
    return {"ko": out / f"{MODULE}.ko", "tools": tools, "toolchain_packages": added}


def install(root: Path, release: str, ko: Path) -> Path:
    """The module at /lib/modules/<release>/extra/ (depmod runs later, in prune)."""
    dest = root / "lib" / "modules" / release / "extra" / f"{MODULE}.ko"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ko, dest)
    os.chmod(dest, 0o644)
    return dest


def ensure_module(root: Path, release: str, versions: dict[str, str], log: Path,
                  say: Progress = lambda _m: None) -> dict[str, Any]:
    """Build (or reuse) the module and install it into `root`; the manifest's entry."""
    key = module_key(release, versions)
    cached = modules_dir() / key
    t0 = time.monotonic()
    if (cached / f"{MODULE}.ko").exists():
        say(f"{MODULE}.ko {key[:12]} cached")
        meta = json.loads((cached / "build.json").read_text())
        meta["cached"] = True
    else:
        say(f"building {MODULE}.ko in the image root ({COMPILER}, linux-headers-{release})")
        built = build_in_root(root, release, versions, log, cache_dir() / "debs" / f"{recipe.SUITE}-driver")
        ko = built.pop("ko")
        magic = check_vermagic(ko, release)
        tmp = modules_dir() / f".{key}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copy2(ko, tmp / ko.name)
        meta = {"key": key, "release": release, "vermagic": magic, **built,
                "build_s": round(time.monotonic() - t0, 1), "ko_bytes": ko.stat().st_size}
        (tmp / "build.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            tmp.rename(cached)
        except OSError:  # another builder published the same key meanwhile: same bytes
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(ko.parent, ignore_errors=True)
        meta["cached"] = False
    check_vermagic(cached / f"{MODULE}.ko", release)
    install(root, release, cached / f"{MODULE}.ko")
    meta["install_s"] = round(time.monotonic() - t0, 1)
    return meta


def built_module(release: str, versions: dict[str, str]) -> Path | None:
    """The cached .ko for these inputs, if one was built."""
    ko = modules_dir() / module_key(release, versions) / f"{MODULE}.ko"
    return ko if ko.exists() else None


def kernel_release_of(versions: dict[str, str]) -> str:
    """The guest kernel's release from a resolution (its linux-image-<release> package)."""
    found = sorted(p.removeprefix("linux-image-") for p in versions
                   if p.startswith("linux-image-") and p != "linux-image-amd64")
    if len(found) != 1:
        raise ImageBuildError(f"expected one linux-image-<release> package in the resolution, found {found}")
    return found[0]


def modinfo(ko: Path) -> dict[str, str]:
    """key=value pairs of a module's .modinfo (first of each key)."""
    out: dict[str, str] = {}
    for raw in ko.read_bytes().split(b"\0"):
        for key in (b"vermagic", b"license", b"alias", b"name", b"depends"):
            if raw.startswith(key + b"=") and key.decode() not in out:
                out[key.decode()] = raw[len(key) + 1 :].decode(errors="replace")
    return out


__all__ = [
    "MODULE",
    "build_in_root",
    "built_module",
    "check_vermagic",
    "driver_sources",
    "ensure_module",
    "kernel_release_of",
    "modinfo",
    "module_key",
    "vermagic",
]

