"""What an OpenCL device offers for SVM, measured, not assumed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import IntFlag
from typing import Any

import pyopencl as cl


class Svm(IntFlag):
    """CL_DEVICE_SVM_CAPABILITIES bits."""

    COARSE_GRAIN_BUFFER = 1 << 0
    FINE_GRAIN_BUFFER = 1 << 1
    FINE_GRAIN_SYSTEM = 1 << 2
    ATOMICS = 1 << 3


NAMES = {
    Svm.COARSE_GRAIN_BUFFER: "coarse-grain buffer SVM",
    Svm.FINE_GRAIN_BUFFER: "fine-grain buffer SVM",
    Svm.FINE_GRAIN_SYSTEM: "fine-grain system SVM",
    Svm.ATOMICS: "SVM atomics",
}


@dataclass
class DeviceInfo:
    platform_name: str
    name: str
    version: str
    opencl_c_version: str
    driver_version: str
    svm: int
    max_alloc: int
    features: list[str] = field(default_factory=list)

    def has(self, need: Svm) -> bool:
        return (self.svm & need) == need

    def svm_capability_names(self) -> list[str]:
        return [n for bit, n in NAMES.items() if self.svm & bit]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["svm_names"] = self.svm_capability_names()
        return d


def describe(platform: cl.Platform, dev: cl.Device) -> DeviceInfo:
    try:
        svm = int(dev.get_info(cl.device_info.SVM_CAPABILITIES))  # type: ignore[call-overload]
    except cl.Error:
        svm = 0
    try:
        features = sorted(f.name for f in dev.get_info(cl.device_info.OPENCL_C_FEATURES))  # type: ignore[attr-defined]
    except (cl.Error, AttributeError):
        features = []
    return DeviceInfo(
        platform_name=platform.name.strip(),
        name=dev.name.strip(),
        version=dev.version.strip(),
        opencl_c_version=dev.opencl_c_version.strip(),
        driver_version=dev.driver_version.strip(),
        svm=svm,
        max_alloc=int(dev.max_mem_alloc_size),
        features=features,
    )


def discover_devices() -> list[tuple[cl.Platform, cl.Device, DeviceInfo]]:
    out = []
    for p in cl.get_platforms():
        for d in p.get_devices():
            out.append((p, d, describe(p, d)))
    return out


def select_device(spec: str | None) -> tuple[cl.Platform, cl.Device, DeviceInfo]:
    """`spec`: None (first device), "P:D" indices, or a substring of the device name."""
    devices = discover_devices()
    if not devices:
        raise SystemExit("no OpenCL device: install an ICD (e.g. pocl-opencl-icd)")
    if spec is None:
        return devices[0]
    if ":" in spec and all(part.isdigit() for part in spec.split(":", 1)):
        pi, di = (int(x) for x in spec.split(":", 1))
        matches = [d for d in devices if d[0] == cl.get_platforms()[pi] and d[1] == d[0].get_devices()[di]]
    else:
        matches = [d for d in devices if spec.lower() in d[2].name.lower()]
    if not matches:
        known = ", ".join(f"{d[2].platform_name}: {d[2].name}" for d in devices)
        raise SystemExit(f"--device {spec!r} matches no device; known: {known}")
    return matches[0]
