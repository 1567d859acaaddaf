"""A busybox initramfs holding only what mounts the root: virtio-blk and ext4."""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.errors import EnvironmentBroken

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


def load_order(deps: dict[str, list[str]], wanted: tuple[str, ...]) -> list[str]:
    """Module paths for `wanted` and their dependencies, dependencies first.

    A module compiled into the kernel has no entry; it is skipped (nothing to load).
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
        path = by_name.get(name.replace("-", "_"))
        if path is not None:
            visit(path)
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
    """Write a gzip'd newc cpio to `out`; returns the modules it loads, in order."""
    if not BUSYBOX.exists():
        raise EnvironmentBroken(f"{BUSYBOX} missing; install busybox-static (make bootstrap)")
    deps = parse_modules_dep((module_dir / "modules.dep").read_text())
    order = load_order(deps, wanted)
    with tempfile.TemporaryDirectory(prefix="initramfs-") as tmp:
        t = Path(tmp)
        for d in ("bin", "proc", "sys", "dev", "newroot", "lib/modules"):
            (t / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, t / "bin" / "busybox")
        shutil.copy2(FILES / "initramfs-init", t / "init")
        names = []
        for rel in order:
            name = module_name(rel) + ".ko"
            (t / "lib" / "modules" / name).write_bytes(_decompressed(module_dir / rel))
            names.append(name)
        (t / "modules.order").write_text("\n".join(names) + "\n")
        files = sorted(str(p.relative_to(t)) for p in t.rglob("*"))
        cpio = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
            input="\n".join(files).encode(),
            cwd=t,
            capture_output=True,
            check=True,
        )
        out.write_bytes(gzip.compress(cpio.stdout, compresslevel=6))
    return names
