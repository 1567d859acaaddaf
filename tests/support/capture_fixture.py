"""Regenerate the real QEMU ``vtd_*`` trace fixtures under tests/fixtures/traces/.

Boots QEMU's emulated VT-d (scalable mode, first-stage, PASID) under TCG with a
Debian 6.12 kernel and a busybox-static initramfs whose /init loads virtio-rng,
reads /dev/hwrng N times (each read is one DMA map + strict unmap, i.e. one
page-selective PASID-IOTLB invalidation plus its wait descriptor) and powers off.

Nothing is installed on the host: the .debs are fetched with ``apt-get download``
and unpacked with ``dpkg -x`` into a work directory. Run as::

    .venv/bin/python -m tests.support.capture_fixture --out tests/fixtures/traces

The exact versions and command line used are written next to the fixtures
(``capture.json``) so tests/fixtures/traces/README.md can be checked against them.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness.qemu.probe import probe_qemu

KERNEL_PKG = "linux-image-6.12.117+deb12-amd64-unsigned"
BUSYBOX_PKG = "busybox-static"
HWRNG_READS = 256

# Interrupt remapping is most of an unfiltered trace (every MSI of every vCPU)
# and says nothing about DMA translation or invalidation, so the events file
# keeps every vtd_* event except the IR ones.
_IR_PREFIXES = ("vtd_ir_", "vtd_warn_ir_", "vtd_irq_generate", "vtd_reg_ir_root")

QEMU_ARGS = [
    "-M", "q35,kernel-irqchip=split", "-accel", "tcg", "-cpu", "max,-la57",
    "-m", "1G", "-smp", "2", "-nographic", "-no-reboot",
    "-device", "virtio-rng-pci-non-transitional,iommu_platform=on",
]
IOMMU = {"intremap": True, "caching_mode": True, "scalable_mode": True, "flts": True, "pasid": True}
CMDLINE = "console=ttyS0 intel_iommu=on,sm_on iommu.strict=1 no5lvl panic=-1"

INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox insmod /virtio-rng.ko
i=0
while [ $i -lt {reads} ]; do
  /bin/busybox dd if=/dev/hwrng of=/dev/null bs=64 count=1 2>/dev/null
  i=$((i+1))
done
echo SVMVAL-CAPTURE-DONE $i
/bin/busybox poweroff -f
"""


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout


def _fetch(work: Path, pkg: str) -> Path:
    debs = sorted(work.glob(f"{pkg}_*.deb"))
    if not debs:
        _run(["apt-get", "download", pkg], cwd=work)
        debs = sorted(work.glob(f"{pkg}_*.deb"))
    if not debs:
        raise SystemExit(f"apt-get download {pkg} produced no .deb in {work}")
    return debs[-1]


def _deb_version(deb: Path) -> str:
    return _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()


def build_initramfs(work: Path, kernel_tree: Path, busybox: Path, reads: int) -> Path:
    root = work / "initramfs"
    shutil.rmtree(root, ignore_errors=True)
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    ko_xz = next(kernel_tree.glob("lib/modules/*/kernel/drivers/char/hw_random/virtio-rng.ko.xz"))
    (root / "virtio-rng.ko").write_bytes(lzma.decompress(ko_xz.read_bytes()))
    init = root / "init"
    init.write_text(INIT.format(reads=reads))
    init.chmod(0o755)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    cpio = work / "initramfs.cpio"
    with cpio.open("wb") as fh:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, check=True,
                       input="\n".join(files).encode(), stdout=fh)
    return cpio


def events_file(work: Path, trace_events_all: Path) -> tuple[Path, list[str]]:
    names = []
    for line in trace_events_all.read_text().splitlines():
        name = line.split("(", 1)[0].strip()
        if name.startswith("vtd_") and not name.startswith(_IR_PREFIXES):
            names.append(name)
    path = work / "events.txt"
    path.write_text("\n".join(names) + "\n")
    return path, names


def capture(work: Path, out: Path, reads: int, qemu: str, timestamps: bool,
            filtered: bool) -> dict[str, object]:
    """Boot once; ``work`` keeps the .debs and unpacked trees (reused), each run's
    artefacts go to ``work/run-plain`` or ``work/run-ts``. ``filtered`` drops the
    interrupt-remapping events; otherwise the trace is what harness.qemu's Machine
    records (``-trace 'vtd_*'``)."""
    work.mkdir(parents=True, exist_ok=True)
    kdeb, bdeb = _fetch(work, KERNEL_PKG), _fetch(work, BUSYBOX_PKG)
    ktree, btree = work / "kpkg", work / "bbpkg"
    for deb, tree in ((kdeb, ktree), (bdeb, btree)):
        if not tree.exists():
            _run(["dpkg", "-x", str(deb), str(tree)])
    kernel = next(ktree.glob("boot/vmlinuz-*"))
    suffix = "-ts" if timestamps else ""
    run = work / f"run{suffix or '-plain'}"
    run.mkdir(exist_ok=True)
    initrd = build_initramfs(run, ktree, btree / "bin" / "busybox", reads)
    evfile, names = events_file(run, Path("/usr/share/qemu/trace-events-all"))
    trace = run / "trace.log"
    trace.unlink(missing_ok=True)
    trace_arg = f"events={evfile}" if filtered else "vtd_*"
    cmd = [qemu, *QEMU_ARGS, "-device", "intel-iommu," + probe_qemu(qemu).iommu_args(IOMMU),
           "-kernel", str(kernel), "-initrd", str(initrd), "-append", CMDLINE, "-trace", trace_arg, "-D", str(trace)]
    if timestamps:
        cmd += ["-msg", "timestamp=on"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    (run / "console.log").write_text(proc.stdout)
    if "SVMVAL-CAPTURE-DONE" not in proc.stdout:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-2000:])
        raise SystemExit(f"guest did not finish (rc {proc.returncode}); see {run}/console.log")
    dest = out / f"vtd-rng{reads}{suffix}.trace.xz"
    out.mkdir(parents=True, exist_ok=True)
    with lzma.open(dest, "wb", preset=9 | lzma.PRESET_EXTREME) as fh:
        fh.write(trace.read_bytes())
    qemu_version = _run([qemu, "--version"]).splitlines()[0]
    info = {
        "fixture": dest.name,
        "qemu": qemu_version,
        "kernel_package": f"{KERNEL_PKG} {_deb_version(kdeb)}",
        "busybox_package": f"{BUSYBOX_PKG} {_deb_version(bdeb)}",
        "hwrng_reads": reads,
        "trace_lines": trace.read_bytes().count(b"\n"),
        "wall_seconds": round(wall, 1),
        "events_excluded": list(_IR_PREFIXES) if filtered else [],
        "events_enabled": len(names) if filtered else "vtd_*",
        "dmar_console": [ln for ln in proc.stdout.splitlines() if "DMAR" in ln or "dmar" in ln],
    }
    info["command"] = [_portable(a, work) for a in cmd]
    return info


def _portable(arg: str, work: Path) -> str:
    """Paths inside the work directory are not part of the recipe: keep names only."""
    if arg.startswith("events="):
        return "events=" + _portable(arg[len("events="):], work)
    return os.path.basename(arg) if arg.startswith(str(work)) else arg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/traces"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/svmval-trace-capture"))
    ap.add_argument("--reads", type=int, default=HWRNG_READS)
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    args = ap.parse_args(argv)
    # A plain, IR-filtered trace, and a full `-trace 'vtd_*'` one with `-msg
    # timestamp=on` as the suite's Machine records it: the parser must read both.
    infos = [capture(args.work, args.out, args.reads, args.qemu, ts, filtered=not ts)
             for ts in (False, True)]
    (args.out / "capture.json").write_text(json.dumps(infos, indent=2) + "\n")
    print(json.dumps(infos, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
