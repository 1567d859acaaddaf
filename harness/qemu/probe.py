"""What a QEMU binary can do: version, accelerators, intel-iommu property names.

Property names moved between releases (x-scalable-mode/x-flts/x-pasid-mode in
10.0; scalable-mode/fsts/pasid-bits/svm in 11.1), so they are probed, never
assumed, and mapped to canonical keys.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import EnvironmentBroken


class QemuProbeError(EnvironmentBroken):
    pass


# canonical key -> property names, newest first
_IOMMU_NAMES: dict[str, tuple[str, ...]] = {
    "scalable_mode": ("scalable-mode", "x-scalable-mode"),
    "flts": ("fsts", "x-flts"),
    "pasid": ("pasid-bits", "x-pasid-mode"),
    "svm": ("svm",),
    "caching_mode": ("caching-mode",),
    "device_iotlb": ("device-iotlb",),
    "intremap": ("intremap",),
    "aw_bits": ("aw-bits",),
    "dma_drain": ("dma-drain",),
    "fs1gp": ("fs1gp",),
    "stale_tm": ("stale-tm",),
    "pt": ("pt",),
}

# What intel-iommu is asked for, by canonical key: True/False for on/off, an int for a
# value (aw_bits=48). pasid=True is 10.x's x-pasid-mode=on and 11.1's pasid-bits=20.
IommuSettings = Mapping[str, bool | int]
PASID_BITS = 20  # what pasid=True asks of a QEMU that takes a width (11.1: pasid-bits)


@dataclass(frozen=True)
class QemuInfo:
    binary: str
    version: tuple[int, int, int]
    version_text: str
    accelerators: frozenset[str]
    iommu_properties: frozenset[str]
    devices: frozenset[str] = field(default_factory=frozenset)

    @property
    def trace_events(self) -> Path:
        """This QEMU's trace-events-all (format strings for the trace parser): beside a
        wrapper (sid's QEMU), else the system's."""
        beside = Path(self.binary).resolve().with_name("trace-events-all")
        return beside if beside.exists() else Path("/usr/share/qemu/trace-events-all")

    def iommu_property(self, key: str) -> str | None:
        """This binary's name for a canonical intel-iommu property, or None."""
        for name in _IOMMU_NAMES[key]:
            if name in self.iommu_properties:
                return name
        return None

    def iommu_args(self, settings: IommuSettings) -> str:
        """intel-iommu's `name=value,...` for `settings`, in this binary's property names
        (the one place that spells them). A setting the binary has no property for is an
        error naming it and the QEMU."""
        out = []
        for key, value in settings.items():
            name = self.iommu_property(key)
            if name is None:
                raise QemuProbeError(f"{self.binary} ({self.version_text}) has no intel-iommu property for "
                                     f"{key}; QEMU >= 10.0 is needed (make bootstrap installs it)")
            if name == "pasid-bits" and isinstance(value, bool):
                text = str(PASID_BITS if value else 0)
            elif isinstance(value, bool):
                text = "on" if value else "off"
            else:
                text = str(value)
            out.append(f"{name}={text}")
        return ",".join(out)

    def has_device(self, name: str) -> bool:
        return name in self.devices

    def describe(self) -> dict[str, object]:
        return {
            "binary": self.binary,
            "version": ".".join(map(str, self.version)),
            "version_text": self.version_text,
            "iommu_properties": sorted(self.iommu_properties),
        }


def _run(binary: str, *args: str) -> str:
    try:
        out = subprocess.run(
            [binary, *args], capture_output=True, text=True, timeout=30, check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QemuProbeError(f"cannot run {binary} {' '.join(args)}: {exc}") from None
    if out.returncode != 0:
        raise QemuProbeError(f"{binary} {' '.join(args)} failed: {out.stderr.strip()[:300]}")
    return out.stdout


def probe_qemu(binary: str = "qemu-system-x86_64") -> QemuInfo:
    path = shutil.which(binary)
    if path is None:
        raise QemuProbeError(f"{binary} not found; run `make bootstrap` to install QEMU >= 10.0")
    return _probe(path, os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _probe(path: str, _mtime: int) -> QemuInfo:
    return parse_probe(path, lambda *args: _run(path, *args))


def parse_probe(path: str, run: Callable[..., str]) -> QemuInfo:
    """What a QEMU binary offers, from its help output; `run(*args)` returns its stdout
    (locally, or on a lab host over SSH)."""
    text = run("--version").splitlines()[0]
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", text)
    if m is None:
        raise QemuProbeError(f"{path}: cannot read a version from {text!r}")
    version = (int(m[1]), int(m[2]), int(m[3]))
    accels = frozenset(
        line.strip() for line in run("-accel", "help").splitlines()[1:] if line.strip()
    )
    props = frozenset(
        m[1] for m in re.finditer(r"^\s+([a-z0-9-]+)=", run("-device", "intel-iommu,help"), re.M)
    )
    devices = frozenset(m[1] for m in re.finditer(r'name "([^"]+)"', run("-device", "help")))
    return QemuInfo(path, version, text, accels, props, devices)
