"""A busybox initramfs holding only what mounts the root: virtio-blk and ext4.

Modules come from the guest kernel's own tree (the root debootstrap made), with
their dependencies resolved from that kernel's modules.dep and decompressed
(.ko.xz/.ko.zst/.ko.gz) so busybox `insmod` can load them.  No udev, no modprobe:
/init insmods them in dependency order, mounts /dev/vda and switch_roots.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

from harness.errors import ConfigError, EnvironmentBroken

FILES = Path(__file__).resolve().parent / "files"
BUSYBOX = Path("/bin/busybox")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """modules.dep: `path: dep1 dep2` with paths relative to the module dir."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[path.strip()] = rest.split()
    return deps


def module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base.replace("-", "_")


def parse_modules_builtin(text: str) -> set[str]:
    """Names of modules compiled into the kernel (modules.builtin)."""
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def load_order(
    deps: dict[str, list[str]],
    wanted: tuple[str, ...],
    builtin: set[str] | frozenset[str] = frozenset(),
) -> list[str]:
    """Module paths for `wanted` and their dependencies, dependencies first.

    A module compiled into the kernel (in `builtin`) needs no loading and is skipped;
    a name that is neither a module nor built in is an error (a typo in the recipe
    would otherwise give an initramfs that cannot mount the root).
    """
    by_name = {module_name(p): p for p in deps}
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        path = by_name.get(key)
        if path is not None:
            visit(path)
        elif key not in builtin:
            raise ConfigError(
                f"kernel module {name!r} (guest_image/recipe.py INITRAMFS_MODULES) is neither in "
                f"modules.dep nor in modules.builtin of this kernel: fix the name"
            )
    return order


def _decompressed(src: Path) -> bytes:
    data = src.read_bytes()
    if src.name.endswith(".xz"):
        return lzma.decompress(data)
    if src.name.endswith(".gz"):
        return gzip.decompress(data)
    if src.name.endswith(".zst"):
        out = subprocess.run(["zstd", "-dc", str(src)], capture_output=True, check=True)
        return out.stdout
    return data


def build_initramfs(module_dir: Path, wanted: tuple[str, ...], out: Path) -> list[str]:
    """Write a gzip'd newc cpio to `out`; returns the modules /init loads, in order."""
    if not BUSYBOX.exists():
        raise EnvironmentBroken(f"{BUSYBOX} missing; install busybox-static (make bootstrap)")
    deps = parse_modules_dep((module_dir / "modules.dep").read_text())
    builtin_file = module_dir / "modules.builtin"
    builtin = parse_modules_builtin(builtin_file.read_text()) if builtin_file.exists() else set()
    order = load_order(deps, wanted, builtin)
    with tempfile.TemporaryDirectory(prefix="initramfs-") as tmp:
        t = Path(tmp)
        for d in ("bin", "proc", "sys", "dev", "newroot", "lib/modules"):
            (t / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, t / "bin" / "busybox")
        shutil.copy2(FILES / "initramfs-init", t / "init")
        (t / "init").chmod(0o755)
        names = []
        for rel in order:
            name = module_name(rel) + ".ko"
            (t / "lib" / "modules" / name).write_bytes(_decompressed(module_dir / rel))
            names.append(name)
        (t / "modules.order").write_text("\n".join(names) + "\n")
        files = sorted(str(p.relative_to(t)) for p in t.rglob("*"))
        for rel in files:  # with --reproducible: same inputs, same cpio bytes
            os.utime(t / rel, (0, 0), follow_symlinks=False)
        cpio = subprocess.run(
            ["cpio", "--quiet", "--reproducible", "-o", "-H", "newc", "-R", "0:0"],
            input="\n".join(files).encode(),
            cwd=t,
            capture_output=True,
            check=False,
        )
        if cpio.returncode != 0:
            raise EnvironmentBroken(
                f"cpio -o for the initramfs failed: {cpio.stderr.decode().strip()}"
            )
        # mtime=0: no timestamp in the gzip header either.
        out.write_bytes(gzip.compress(cpio.stdout, compresslevel=6, mtime=0))
    return names


def read_initramfs(path: Path) -> bytes:
    """The uncompressed cpio archive of an initramfs (gzip, xz, zstd or none)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    return data


class CpioMember(NamedTuple):
    mode: int  # st_mode: file type and permission bits
    data: bytes  # b"" for directories


def list_initramfs(path: Path) -> dict[str, CpioMember]:
    """Members of a newc initramfs, by name."""
    raw = read_initramfs(path)
    members: dict[str, CpioMember] = {}
    pos = 0
    while pos + 110 <= len(raw):
        header = raw[pos : pos + 110]
        if header[:6] not in (b"070701", b"070702"):
            raise ValueError(f"{path}: not a newc cpio at offset {pos}")
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        filesize, namesize = fields[6], fields[11]
        name_start = pos + 110
        name = raw[name_start : name_start + namesize - 1].decode()
        data_start = (name_start + namesize + 3) & ~3
        data = raw[data_start : data_start + filesize]
        pos = (data_start + filesize + 3) & ~3
        if name == "TRAILER!!!":
            break
        members[name] = CpioMember(fields[1], data)
    return members
