"""Local-lab preflight: can this machine run the local lab, and if not, what to do.

Each line is a real measurement of this machine (no assumed values); a failed
line carries the command that fixes it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

from rich.markup import escape
from rich.table import Table

from host_setup.preflight_line import PreflightLine

MIN_QEMU = (10, 0)
FIX_BOOTSTRAP = "run `make bootstrap` (installs QEMU >= 10.0 from bookworm-backports, PoCL, tools)"


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def check_qemu(binary: str) -> list[PreflightLine]:
    from harness.qemu.probe import QemuProbeError, probe_qemu

    path = shutil.which(binary)
    if path is None:
        return [PreflightLine("QEMU", False, f"{binary} not found", FIX_BOOTSTRAP)]
    try:
        info = probe_qemu(path)
    except QemuProbeError as exc:
        return [PreflightLine("QEMU", False, str(exc), FIX_BOOTSTRAP)]
    version = ".".join(map(str, info.version))
    out = [
        PreflightLine(
            "QEMU version",
            info.version[:2] >= MIN_QEMU,
            f"{version} ({path})",
            "" if info.version[:2] >= MIN_QEMU else FIX_BOOTSTRAP,
        )
    ]
    # Scalable mode + first-stage translation + PASID are what the local lab emulates.
    for key, what in (
        ("scalable_mode", "scalable mode"),
        ("flts", "first-stage translation"),
        ("pasid", "PASID support"),
        ("caching_mode", "caching mode"),
    ):
        name = info.iommu_property(key)
        out.append(
            PreflightLine(
                f"intel-iommu {what}",
                name is not None,
                name or "property missing",
                "" if name else f"this QEMU's intel-iommu has no {what}; {FIX_BOOTSTRAP}",
            )
        )
    svm = info.iommu_property("svm")
    out.append(
        PreflightLine(
            "intel-iommu svm (PRS/PASID to the guest driver)",
            True if svm else None,
            svm or "absent (QEMU < 11: no page requests; PRQ checks use modelled traffic)",
        )
    )
    out.append(
        PreflightLine(
            "accelerator tcg",
            "tcg" in info.accelerators,
            "available" if "tcg" in info.accelerators else "missing",
            "" if "tcg" in info.accelerators else "install a QEMU built with TCG (Debian's is)",
        )
    )
    return out


def check_kvm() -> PreflightLine:
    # /dev/kvm on these build machines is nested PVM where unmodified guests die with
    # emulation failures (docs/FIELD_NOTES.md); the local lab uses TCG and says so.
    if not os.path.exists("/dev/kvm"):
        return PreflightLine("accelerator kvm", None, "no /dev/kvm: TCG will be used")
    modules = open("/proc/modules").read() if os.path.exists("/proc/modules") else ""
    if "kvm_pvm" in modules:
        return PreflightLine("accelerator kvm", None, "/dev/kvm is PVM (nested, unreliable): TCG will be used")
    return PreflightLine("accelerator kvm", None,
                         "/dev/kvm present: the local lab still uses TCG for repeatable traces")


_SVM_BITS = {
    1 << 0: "coarse-grain buffer",
    1 << 1: "fine-grain buffer",
    1 << 2: "fine-grain system",
    1 << 3: "atomics",
}


def check_opencl() -> list[PreflightLine]:
    import pyopencl as cl

    try:
        devices = [(p, d) for p in cl.get_platforms() for d in p.get_devices()]
    except cl.Error as exc:
        devices, error = [], f"{type(exc).__name__}: {exc}"
    else:
        error = "no devices"
    if not devices:
        return [
            PreflightLine(
                "OpenCL platforms",
                False,
                error,
                "install an ICD: `apt-get install pocl-opencl-icd ocl-icd-libopencl1` (make bootstrap)",
            )
        ]
    out = []
    for platform, dev in devices:
        caps = int(dev.get_info(cl.device_info.SVM_CAPABILITIES))  # type: ignore[call-overload]
        names = [name for bit, name in _SVM_BITS.items() if caps & bit]
        out.append(
            PreflightLine(
                f"OpenCL {platform.name.strip()} / {dev.name.strip()}",
                bool(names),
                f"{dev.version.strip()}; SVM caps {caps:#x}: {', '.join(names) or 'none'}",
                "" if names else "this device has no SVM; PoCL >= 1.6 has it",
            )
        )
    return out


def check_guest_kernel() -> PreflightLine:
    from guest_image.build import cached_image

    image = cached_image()
    if image is not None:
        kernel = image.manifest.get("kernel", image.kernel.name)
        return PreflightLine("guest kernel", True, f"{kernel} (image {image.digest[:12]}, cached)")
    tools = [t for t in ("debootstrap", "mke2fs", "cpio") if shutil.which(t) is None]
    if tools:
        return PreflightLine("guest kernel", False, f"image not built; missing {', '.join(tools)}", FIX_BOOTSTRAP)
    return PreflightLine(
        "guest kernel",
        None,
        "image not built yet: the first run builds it from Debian packages (about 2 minutes)",
        "`svmval image build` builds it ahead of time",
    )


def check_sid_qemu() -> PreflightLine:
    from harness.qemu.sid import cached_sid_qemu

    sid = cached_sid_qemu()
    if sid is None:
        return PreflightLine("QEMU 11 from sid", None, "not installed (the local lab fetches it on its first run)",
                       "`svmval qemu install-sid`: svm=on, PRS, iommu-testdev")
    return PreflightLine("QEMU 11 from sid", None, f"installed ({sid}); a second profile (qemu = \"sid\")")


def run_local_preflight(qemu: str = "svmval") -> list[PreflightLine]:
    from harness.qemu.sid import local_qemu

    chosen = local_qemu(qemu)
    checks: list[Callable[[], list[PreflightLine] | PreflightLine]] = [
        lambda: check_qemu(chosen),
        check_sid_qemu,
        check_kvm,
        check_opencl,
        check_guest_kernel,
    ]
    verdicts: list[PreflightLine] = []
    for check in checks:
        result = check()
        verdicts.extend(result if isinstance(result, list) else [result])
    return verdicts


def render_verdicts(verdicts: list[PreflightLine], title: str) -> Table:
    table = Table(title=title)
    for col in ("check", "verdict", "value", "fix"):
        table.add_column(col, overflow="fold")
    for v in verdicts:
        mark = {True: "[green]ok[/]", False: "[bold red]FAIL[/]", None: "[yellow]note[/]"}[v.ok]
        table.add_row(escape(v.name), mark, escape(v.value), escape(v.fix))
    return table
