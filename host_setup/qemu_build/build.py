"""svmval's own QEMU: Debian's `qemu` source + svmval's patches + svmval's devices.

Cache layout under `cache_dir()/qemu-build/`:
- `source/<dsc sha256>/`: the verified source package (source.py);
- `venv/`: meson and pycotap from PyPI (the +ds tarball has no python/wheels);
- `trees/<tree key>/`: the unpacked, patched source with its configured `build/`,
  keyed by (source sha256, patches, configure flags, tree-preparation version): a
  change to the device sources only reruns ninja there (seconds);
- `installs/<install key>/`: the binary, `trace-events-all` and the wrapper
  `qemu-system-x86_64`, keyed by (tree key, device sources); made in a temporary
  folder and renamed into place, so readers see a whole install or none;
- `logs/`: the log of a failed build (named in the error).
Builds run one at a time under `build.lock`, at `nice -n 10`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.paths import cache_lock
from harness.qemu.probe import QemuProbeError, probe_qemu
from host_setup.qemu_build import source, tree
from host_setup.qemu_build.errors import MissingBuildPackage, QemuBuildError
from host_setup.qemu_build.tree import Named

Say = Callable[[str], None]

CONFIGURE_FLAGS: tuple[str, ...] = (
    "--target-list=x86_64-softmmu",
    "--without-default-features",
    "--enable-tcg",
    "--enable-slirp",
    "--disable-docs",
    "--disable-install-blobs",
    "--enable-trace-backends=log",
)
TARGET = "qemu-system-x86_64"
WRAPPER = "qemu-system-x86_64"
# bump when the tree preparation (tree.py) or the venv changes in a way the key cannot see
PREPARATION = "1"
PYPI_PINS = ("meson==1.9.0", "pycotap==1.3.1")
# Debian package -> a file or program that shows it is installed
DEBIAN_PACKAGES: dict[str, str] = {
    "libglib2.0-dev": "/usr/lib/x86_64-linux-gnu/pkgconfig/glib-2.0.pc",
    "libslirp-dev": "/usr/lib/x86_64-linux-gnu/pkgconfig/slirp.pc",
    "libpixman-1-dev": "/usr/lib/x86_64-linux-gnu/pkgconfig/pixman-1.pc",
    "libfdt-dev": "/usr/include/libfdt.h",
    "device-tree-compiler": "dtc",
    "flex": "flex",
    "bison": "bison",
    "ninja-build": "ninja",
    "pkg-config": "pkg-config",
    "python3-venv": "/usr/lib/python3.11/ensurepip/__init__.py",
    "gcc": "cc",
    "patch": "patch",
    "dpkg-dev": "dpkg-source",
}
# firmware at run time comes from the installed Debian QEMU (qemu-system-data, seabios, ipxe-qemu)
FIRMWARE_DIRS = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")
KEEP_INSTALLS = 3


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def tree_key(source_sha256: str, patches: Sequence[Named], flags: Sequence[str] = CONFIGURE_FLAGS,
             preparation: str = PREPARATION) -> str:
    """Key of a configured tree: what it was unpacked from, patched with, configured with."""
    parts = [b"svmval-qemu-tree", preparation.encode(), source_sha256.encode(), *(f.encode() for f in flags)]
    for p in patches:
        parts += [p.name.encode(), p.data]
    return _sha(*parts)


def install_key(tree: str, devices: Sequence[Named]) -> str:
    """Key of an install: the tree it was built in and the device sources built into it."""
    parts = [b"svmval-qemu-install", tree.encode()]
    for d in devices:
        parts += [d.name.encode(), d.data]
    return _sha(*parts)


def missing_packages(check: dict[str, str] = DEBIAN_PACKAGES) -> list[str]:
    """The Debian packages of `check` whose file or program is absent."""
    missing = []
    for package, probe in check.items():
        present = Path(probe).exists() if probe.startswith("/") else shutil.which(probe) is not None
        if not present:
            missing.append(package)
    return missing


def require_packages(check: dict[str, str] = DEBIAN_PACKAGES) -> None:
    missing = missing_packages(check)
    if missing:
        raise MissingBuildPackage(
            missing, f"apt-get install --no-install-recommends {' '.join(missing)} (or run `make bootstrap`)"
        )


# -- what is in the repository now --------------------------------------------------
@dataclass(frozen=True)
class Inputs:
    """A snapshot of what a build uses: the source, the patches, the device files."""

    src: source.FetchedSource
    patches: list[Named]
    devices: list[Named]

    @classmethod
    def now(cls, src: source.FetchedSource, device_dir: Path | None = None) -> Inputs:
        devices = tree.device_files(device_dir or tree.DEVICE_DIR)
        return cls(src, tree.read_all(tree.patch_files()), tree.read_all(devices))

    @property
    def tree_key(self) -> str:
        return tree_key(self.src.dsc_sha256, self.patches)

    @property
    def install_key(self) -> str:
        return install_key(self.tree_key, self.devices)


def _root() -> Path:
    return source.build_root()


def _install_dir(key: str) -> Path:
    return _root() / "installs" / key[:16]


def _tree_dir(key: str) -> Path:
    return _root() / "trees" / key[:16]


def cached_svmval_qemu(device_dir: Path | None = None) -> Path | None:
    """The wrapper of the install for the cached source, today's patches and devices, if built.

    `device_dir`: build these device sources instead of host_setup/qemu_build/device/."""
    src = source.cached_source()
    if src is None:
        return None
    wrapper = _install_dir(Inputs.now(src, device_dir).install_key) / WRAPPER
    return wrapper if (wrapper.parent / "manifest.json").exists() else None


def ensure_svmval_qemu(say: Say = lambda _m: None, *, force: bool = False, device_dir: Path | None = None) -> Path:
    """svmval's QEMU wrapper, built first when the source, patches or devices changed.

    `force` fetches the source anew (a newer Debian version if one downloads now) and
    rebuilds even when an install is cached. `device_dir`: build these device sources
    instead of host_setup/qemu_build/device/ (an empty folder: none)."""
    if not force and (cached := cached_svmval_qemu(device_dir)) is not None:
        return cached
    require_packages()
    with cache_lock(_root() / "build.lock"):
        if not force and (cached := cached_svmval_qemu(device_dir)) is not None:
            say("svmval's QEMU was built meanwhile by another builder")
            return cached
        src = source.fetch_source(say, refresh=force)
        inputs = Inputs.now(src, device_dir)
        tkey, ikey = inputs.tree_key, inputs.install_key
        final = _install_dir(ikey)
        logs = _root() / "logs"
        logs.mkdir(exist_ok=True)
        log = logs / f"build-{ikey[:16]}-{time.strftime('%Y%m%dT%H%M%S')}.log"
        timings: dict[str, float] = {}
        try:
            tdir = _prepare_tree(inputs, log, say, timings, fresh=force)
            _build(tdir, inputs, log, say, timings)
            wrapper = _install(inputs, tdir, final, log, timings)
        except QemuBuildError as exc:
            if log.name not in str(exc):
                raise type(exc)(f"{exc}\nbuild log: {log}") from None
            raise
        log.unlink(missing_ok=True)  # the install keeps its own copy
        _prune(tkey, ikey)
        say(f"svmval's QEMU ({src.version}) ready at {wrapper}")
        return wrapper


def _run_logged(argv: list[str], cwd: Path, log: Path, what: str,
                on_line: Callable[[str], None] | None = None) -> None:
    with open(log, "a") as fh:
        fh.write(f"\n$ (cd {cwd} && {' '.join(argv)})\n")
        fh.flush()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            if on_line is not None:
                on_line(line)
        rc = proc.wait()
    if rc != 0:
        tail = "\n  ".join(log.read_text(errors="replace").splitlines()[-12:])
        raise QemuBuildError(f"{what} failed (exit {rc}); build log: {log}\n  {tail}")


def _venv(log: Path, say: Say) -> Path:
    """A venv in the cache with meson and pycotap pinned (configure's python)."""
    venv = _root() / ("venv-" + _sha(*(p.encode() for p in PYPI_PINS))[:12])
    python = venv / "bin" / "python3"
    if (venv / ".complete").exists():
        return python
    say(f"build venv: pip install {' '.join(PYPI_PINS)}")
    shutil.rmtree(venv, ignore_errors=True)
    _run_logged([sys.executable, "-m", "venv", str(venv)], _root(), log, "python3 -m venv (needs python3-venv)")
    try:
        _run_logged([str(python), "-m", "pip", "install", "-q", *PYPI_PINS], _root(), log, "pip install")
    except QemuBuildError as exc:
        raise MissingBuildPackage(list(PYPI_PINS), f"pip could not install them from PyPI ({exc})") from None
    (venv / ".complete").write_text("\n".join(PYPI_PINS) + "\n")
    return python


def _prepare_tree(inputs: Inputs, log: Path, say: Say, timings: dict[str, float], *, fresh: bool) -> Path:
    """The unpacked, patched, configured tree for `key` (made unless already complete).

    meson records absolute paths, so the tree is made in place; its marker file is
    written last, and a tree without it is a leftover of a crash, made again."""
    src, key = inputs.src, inputs.tree_key
    tdir = _tree_dir(key)
    marker = tdir / "tree.json"
    if marker.exists() and not fresh:
        return tdir
    shutil.rmtree(tdir, ignore_errors=True)
    tdir.mkdir(parents=True)
    python = _venv(log, say)
    say(f"dpkg-source -x {src.dsc.name}")
    t0 = time.monotonic()
    srcdir = tdir / "src"
    source.unpack(src, srcdir, log)
    patches = inputs.patches
    say(f"applying {len(patches)} svmval patch(es)")
    tree.apply_patches(srcdir, patches, log)
    tree.fix_build(srcdir)
    tree.install_devices(srcdir, inputs.devices)
    timings["unpack_s"] = time.monotonic() - t0
    say("configure (x86_64-softmmu, TCG, slirp, trace backend log)")
    t1 = time.monotonic()
    (srcdir / "build").mkdir()
    _run_logged(["nice", "-n", "10", "../configure", f"--python={python}", *CONFIGURE_FLAGS],
                srcdir / "build", log, "QEMU configure")
    timings["configure_s"] = time.monotonic() - t1
    marker.write_text(json.dumps({"key": key, "source": src.version, "dsc_sha256": src.dsc_sha256,
                                  "patches": [p.name for p in patches], "configure": list(CONFIGURE_FLAGS),
                                  "timings": timings}, indent=1))
    return tdir


_STEP = re.compile(r"^\[(\d+)/(\d+)\]")


def _build(tdir: Path, inputs: Inputs, log: Path, say: Say, timings: dict[str, float]) -> None:
    srcdir = tdir / "src"
    changed = tree.install_devices(srcdir, inputs.devices)
    if changed:
        say(f"device sources changed: {', '.join(changed)}")
    last = [0.0]

    def progress(line: str) -> None:
        m = _STEP.match(line)
        if m and (time.monotonic() - last[0] > 1.0 or m[1] == m[2]):
            last[0] = time.monotonic()
            say(f"ninja: {m[1]} of {m[2]} steps")

    t0 = time.monotonic()
    say(f"ninja {TARGET}")
    jobs = str(os.cpu_count() or 1)
    _run_logged(["nice", "-n", "10", "ninja", "-j", jobs, TARGET, "trace/trace-events-all"], srcdir / "build", log,
                f"ninja {TARGET}", progress)
    timings["ninja_s"] = time.monotonic() - t0


def wrapper_text(firmware: Sequence[str] = FIRMWARE_DIRS) -> str:
    dirs = " ".join(f"-L {d}" for d in firmware if Path(d).is_dir())
    return (
        "#!/bin/sh\n"
        "# svmval's QEMU (host_setup/qemu_build): Debian's source + svmval's patches and devices;\n"
        "# firmware from the installed Debian QEMU.\n"
        'here=$(dirname "$(readlink -f "$0")")\n'
        f'exec "$here/bin/{TARGET}" {dirs} "$@"\n'
    )


def _install(inputs: Inputs, tdir: Path, final: Path, log: Path, timings: dict[str, float]) -> Path:
    src, tkey, ikey = inputs.src, inputs.tree_key, inputs.install_key
    build = tdir / "src" / "build"
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"tmp-{ikey[:12]}-", dir=final.parent))
    try:
        (work / "bin").mkdir()
        shutil.copy2(build / TARGET, work / "bin" / TARGET)
        shutil.copy2(build / "trace" / "trace-events-all", work / "trace-events-all")
        wrapper = work / WRAPPER
        wrapper.write_text(wrapper_text())
        wrapper.chmod(0o755)
        try:
            info = probe_qemu(str(wrapper))
        except QemuProbeError as exc:
            raise QemuBuildError(f"the built QEMU does not run: {exc}") from None
        shutil.copy2(log, work / "build.log")
        manifest = {
            "source": {"package": src.package, "version": src.version, "dsc_sha256": src.dsc_sha256},
            "tree_key": tkey,
            "install_key": ikey,
            "patches": [p.name for p in inputs.patches],
            "devices": {d.name: hashlib.sha256(d.data).hexdigest() for d in inputs.devices},
            "configure": list(CONFIGURE_FLAGS),
            "qemu_version": info.version_text,
            "iommu_properties": sorted(info.iommu_properties),
            "timings": timings,
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        work.chmod(0o755)
        if final.exists():
            old = final.with_name(f"old-{ikey[:12]}-{time.time_ns()}")
            final.rename(old)
            work.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final / WRAPPER


def _prune(tkey: str, ikey: str) -> None:
    """Drop trees of other keys (rebuildable, ~1 GB each) and all but the newest installs."""
    for d in (_root() / "trees").iterdir():
        if d.name != tkey[:16]:
            shutil.rmtree(d, ignore_errors=True)
    installs = sorted((d for d in (_root() / "installs").iterdir() if (d / "manifest.json").exists()),
                      key=lambda d: d.stat().st_mtime, reverse=True)
    for d in installs[KEEP_INSTALLS:]:
        if d.name != ikey[:16]:
            shutil.rmtree(d, ignore_errors=True)
