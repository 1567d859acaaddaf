"""The QEMU source tree svmval builds: Debian's source, svmval's patches, svmval's devices.

Three edits, each idempotent and checked:
- the patch series of `patches/` (`patch -p1`, in name order), once, on a fresh tree;
- the one build fix the +ds tarball needs (meson would unpack EDK2 blobs it stripped);
- the devices of `device/`: every `*.c` (and `*.h`) copied into `hw/misc/` and every
  `*.c` listed in `hw/misc/meson.build`, inside a marked block rewritten on each
  build; a `device/trace-events` file goes into a marked block of
  `hw/misc/trace-events`. Unchanged files are left untouched (ninja then rebuilds
  nothing), so a change to one device file rebuilds one object and relinks.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from host_setup.qemu_build.errors import PatchFailed, QemuBuildError

HERE = Path(__file__).resolve().parent
PATCH_DIR = HERE / "patches"
DEVICE_DIR = HERE / "device"

BEGIN = "# svmval devices (host_setup/qemu_build/device/): begin, generated"
END = "# svmval devices: end"
# x86 system builds with PCI Express (q35): the devices are PCIe endpoints using ATS/PASID/PRI
DEVICE_WHEN = "['CONFIG_PCI_DEVICES', 'CONFIG_PCI_EXPRESS']"
COPIED = ".svmval-devices.json"  # which files of hw/misc/ svmval put there

EDK2_LINE = "    unpack_edk2_blobs = bzip2.found()\n"
EDK2_FIX = "    unpack_edk2_blobs = false  # svmval: the +ds tarball has no EDK2 blobs to unpack\n"


@dataclass(frozen=True)
class Named:
    """A file's name and bytes: what a cache key is computed over."""

    name: str
    data: bytes

    @classmethod
    def read(cls, path: Path) -> Named:
        return cls(path.name, path.read_bytes())


def read_all(paths: list[Path]) -> list[Named]:
    """A snapshot of the files (the build uses these bytes, whatever changes on disk meanwhile)."""
    return [Named.read(p) for p in paths]


def patch_files(directory: Path = PATCH_DIR) -> list[Path]:
    return sorted(directory.glob("*.patch"))


def device_files(directory: Path = DEVICE_DIR) -> list[Path]:
    """The device sources to build in: `*.c`, `*.h` and an optional `trace-events`."""
    if not directory.is_dir():
        return []
    files = [p for p in directory.iterdir() if p.is_file() and (p.suffix in (".c", ".h") or p.name == "trace-events")]
    return sorted(files)


def apply_patches(tree: Path, patches: list[Named], log: Path) -> None:
    """Apply each patch with `patch -p1` (a dry run first, so a failure leaves no half-applied patch)."""
    for p in patches:
        for dry in (True, False):
            argv = ["patch", "-p1", "--forward", "--batch"] + (["--dry-run"] if dry else [])
            proc = subprocess.run(argv, cwd=tree, input=p.data, capture_output=True, check=False)
            out = (proc.stdout + proc.stderr).decode(errors="replace")
            with open(log, "a") as fh:
                fh.write(f"$ {' '.join(argv)} < {p.name}\n{out}")
            if proc.returncode != 0:
                raise PatchFailed(
                    f"{p.name} does not apply to {tree}:\n  "
                    + "\n  ".join(out.strip().splitlines()[-8:])
                    + f"\nfix: regenerate it against this QEMU source (diff -u against a pristine copy); log: {log}"
                )


def fix_build(tree: Path) -> None:
    """Force meson's unpack_edk2_blobs off (the +ds tarball strips the blobs)."""
    path = tree / "meson.build"
    text = path.read_text()
    if EDK2_FIX in text:
        return
    if EDK2_LINE not in text:
        raise QemuBuildError(f"{path}: no line {EDK2_LINE.strip()!r} to turn off; update tree.fix_build for this QEMU")
    path.write_text(text.replace(EDK2_LINE, EDK2_FIX))


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.exists() and path.read_bytes() == data:
        return False
    tmp = path.with_name(path.name + ".svmval-tmp")
    tmp.write_bytes(data)
    tmp.rename(path)
    return True


def _replace_block(text: str, lines: list[str]) -> str:
    """`text` with svmval's marked block holding `lines` (no block at all when empty)."""
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END + "\n", 1)[1] if END + "\n" in rest else ""
        text = head.rstrip("\n") + "\n" + tail if head else tail
    if not lines:
        return text
    return text.rstrip("\n") + "\n\n" + BEGIN + "\n" + "".join(line + "\n" for line in lines) + END + "\n"


def meson_lines(sources: list[str]) -> list[str]:
    return [f"system_ss.add(when: {DEVICE_WHEN}, if_true: files('{name}'))" for name in sources]


def install_devices(tree: Path, devices: list[Named]) -> list[str]:
    """Copy the device files into hw/misc/, list the .c files in its meson.build; returns what changed."""
    misc = tree / "hw" / "misc"
    changed: list[str] = []
    state = misc / COPIED
    before = set(json.loads(state.read_text())) if state.exists() else set()
    sources = [d for d in devices if d.name.endswith((".c", ".h"))]
    names = {d.name for d in sources}
    for d in sources:
        target = misc / d.name
        if d.name not in before and target.exists() and d.name:
            raise QemuBuildError(f"device file {d.name} would overwrite QEMU's own hw/misc/{d.name}: rename it")
        if _write_if_changed(target, d.data):
            changed.append(d.name)
    for gone in sorted(before - names):
        (misc / gone).unlink(missing_ok=True)
        changed.append(gone)
    state.write_text(json.dumps(sorted(names)))
    meson = misc / "meson.build"
    text = meson.read_text()
    lines = meson_lines(sorted(n for n in names if n.endswith(".c")))
    if _write_if_changed(meson, _replace_block(text, lines).encode()):
        changed.append("meson.build")
    events = misc / "trace-events"
    extra = next((d for d in devices if d.name == "trace-events"), None)
    ev_lines = [ln for ln in extra.data.decode().splitlines() if ln.strip()] if extra else []
    if _write_if_changed(events, _replace_block(events.read_text(), ev_lines).encode()):
        changed.append("trace-events")
    return changed
