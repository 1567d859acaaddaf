"""QEMU 11.1 from Debian sid, without installing it on the host.

bookworm can only install QEMU 10.0 (backports); sid's 11.1 needs a newer libc. It
is debootstrapped into a folder of the cache and run through that folder's own
dynamic loader and libraries (no chroot, so every host path in the command line
works unchanged). 11.1 is what has `svm=on` (the design this suite validates),
PRS in ECAP, PASID-cache trace events and `iommu-testdev`.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from guest_image.resolve import debian_mirror
from harness.errors import EnvironmentBroken
from harness.paths import cache_dir
from harness.qemu.probe import QemuProbeError, probe_qemu

log = logging.getLogger(__name__)

SUITE = "sid"
WRAPPER = "qemu-system-x86_64"


def sid_dir() -> Path:
    return cache_dir() / "qemu-sid"


def cached_sid_qemu() -> Path | None:
    wrapper = sid_dir() / "current" / WRAPPER
    return wrapper if wrapper.exists() else None


def _wrapper_text(root: Path) -> str:
    libs = f"{root}/usr/lib/x86_64-linux-gnu:{root}/lib/x86_64-linux-gnu"
    data = " ".join(f"-L {root}{d}" for d in ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu"))
    return (
        "#!/bin/sh\n"
        "# QEMU from Debian sid, run with its own loader and libraries (svmval).\n"
        f"export QEMU_MODULE_DIR={root}/usr/lib/x86_64-linux-gnu/qemu\n"
        f'exec {root}/lib64/ld-linux-x86-64.so.2 --library-path {libs} {root}/usr/bin/qemu-system-x86_64 {data} "$@"\n'
    )


def ensure_sid_qemu(say: Callable[[str], None] = lambda _m: None, *, force: bool = False) -> Path:
    """The sid QEMU wrapper, debootstrapped into the cache first if missing (~35 s)."""
    existing = cached_sid_qemu()
    if existing is not None and not force:
        return existing
    if shutil.which("debootstrap") is None:
        raise EnvironmentBroken("debootstrap is not installed; run `make bootstrap`")
    sid_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=sid_dir()))
    root = work / "root"
    say("debootstrap sid with qemu-system-x86 (QEMU 11.x)")
    log = work / "debootstrap.log"
    with open(log, "wb") as fh:
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=qemu-system-x86", SUITE, str(root), debian_mirror()],
            stdout=fh, stderr=subprocess.STDOUT, check=False,
        )
    if proc.returncode != 0:
        tail = "\n  ".join(log.read_text(errors="replace").splitlines()[-15:])
        shutil.rmtree(work, ignore_errors=True)
        raise EnvironmentBroken(f"debootstrap of sid's QEMU failed (exit {proc.returncode}):\n  {tail}")
    wrapper = work / WRAPPER
    wrapper.write_text(_wrapper_text(root))
    wrapper.chmod(0o755)
    (work / "trace-events-all").symlink_to(root / "usr/share/qemu/trace-events-all")
    try:
        info = probe_qemu(str(wrapper))
    except QemuProbeError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise EnvironmentBroken(f"sid's QEMU does not run here: {exc}") from None
    final = sid_dir() / ".".join(map(str, info.version))
    if final.exists():
        shutil.rmtree(final)
    work.rename(final)
    # the wrapper names its root by absolute path: rewrite it for the final place
    (final / WRAPPER).write_text(_wrapper_text(final / "root"))
    (final / "trace-events-all").unlink()
    (final / "trace-events-all").symlink_to(final / "root/usr/share/qemu/trace-events-all")
    current = sid_dir() / "current"
    current.unlink(missing_ok=True)
    current.symlink_to(final.name)
    say(f"QEMU {info.version_text} ready at {final / WRAPPER}")
    return current / WRAPPER


SID = "sid"  # an inventory's `qemu = "sid"` selects this build
SVMVAL = "svmval"  # `qemu = "svmval"`: svmval's own build (host_setup/qemu_build)
NEWEST = "newest"  # sid's build, else the system QEMU
SYSTEM = "qemu-system-x86_64"


def local_qemu(qemu: str, say: Callable[[str], None] = lambda _m: None) -> str:
    """The binary for an inventory's `qemu` field: "sid" means the sid build (fetched
    into the cache when missing, an error if it cannot be), "newest" the same but
    falling back to the system QEMU, "svmval" svmval's own build from Debian's source
    (built into the cache when missing), anything else a binary name or path."""
    if qemu == SID:
        return str(ensure_sid_qemu(say))
    if qemu == SVMVAL:
        from host_setup.qemu_build import ensure_svmval_qemu

        return str(ensure_svmval_qemu(say))
    if qemu == NEWEST:
        try:
            return str(ensure_sid_qemu(say))
        except EnvironmentBroken as exc:
            log.warning("QEMU from sid is not available (%s); the local lab uses the system QEMU", exc)
            say(f"QEMU from sid is not available, using the system QEMU: {exc}")
            return SYSTEM
    return qemu
