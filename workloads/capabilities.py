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


# Every skip names the capability the way the spec spells it, so a reader can grep clinfo.
NAMES = {
    Svm.COARSE_GRAIN_BUFFER: "coarse-grain buffer SVM (CL_DEVICE_SVM_COARSE_GRAIN_BUFFER)",
    Svm.FINE_GRAIN_BUFFER: "fine-grain buffer SVM (CL_DEVICE_SVM_FINE_GRAIN_BUFFER)",
    Svm.FINE_GRAIN_SYSTEM: "fine-grain system SVM (CL_DEVICE_SVM_FINE_GRAIN_SYSTEM)",
    Svm.ATOMICS: "SVM atomics (CL_DEVICE_SVM_ATOMICS)",
}


class Atomic(IntFlag):
    """CL_DEVICE_ATOMIC_MEMORY_CAPABILITIES bits (OpenCL 3.0)."""

    ORDER_RELAXED = 1 << 0
    ORDER_ACQ_REL = 1 << 1
    ORDER_SEQ_CST = 1 << 2
    SCOPE_WORK_ITEM = 1 << 3
    SCOPE_WORK_GROUP = 1 << 4
    SCOPE_DEVICE = 1 << 5
    SCOPE_ALL_DEVICES = 1 << 6


# The OpenCL C scope each capability bit allows, for results and skip reasons.
SCOPES = {
    Atomic.SCOPE_DEVICE: ("memory_scope_device", "CL_DEVICE_ATOMIC_SCOPE_DEVICE"),
    Atomic.SCOPE_ALL_DEVICES: ("memory_scope_all_svm_devices", "CL_DEVICE_ATOMIC_SCOPE_ALL_DEVICES"),
}

CL_DEVICE_TYPE_CPU = 1 << 1
UNIFIED_SVM = "cl_khr_unified_svm"


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
    atomic_memory: int = 0  # CL_DEVICE_ATOMIC_MEMORY_CAPABILITIES (0: not reported, pre-3.0)
    extensions: list[str] = field(default_factory=list)
    device_type: int = 0
    base_addr_align_bits: int = 1024
    index: int = 0  # position in the run's context

    def has(self, need: Svm) -> bool:
        return (self.svm & need) == need

    def has_atomic(self, bit: Atomic) -> bool:
        return bool(self.atomic_memory & bit)

    @property
    def is_cpu(self) -> bool:
        return bool(self.device_type & CL_DEVICE_TYPE_CPU)

    @property
    def label(self) -> str:
        return f"{self.index}: {self.name}"

    def svm_capability_names(self) -> list[str]:
        return [n for bit, n in NAMES.items() if self.svm & bit]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["svm_names"] = self.svm_capability_names()
        d["atomic_names"] = [str(b.name) for b in Atomic if self.atomic_memory & b]
        d["is_cpu"] = self.is_cpu
        return d


def _info(dev: cl.Device, name: str, default: Any) -> Any:
    param = getattr(cl.device_info, name, None)
    if param is None:
        return default
    try:
        return dev.get_info(param)
    except (cl.Error, ValueError, TypeError):
        return default


def describe(platform: cl.Platform, dev: cl.Device, index: int = 0) -> DeviceInfo:
    try:
        features = sorted(f.name for f in _info(dev, "OPENCL_C_FEATURES", []))
    except (AttributeError, TypeError):
        features = []
    return DeviceInfo(
        platform_name=platform.name.strip(),
        name=dev.name.strip(),
        version=dev.version.strip(),
        opencl_c_version=dev.opencl_c_version.strip(),
        driver_version=dev.driver_version.strip(),
        svm=int(_info(dev, "SVM_CAPABILITIES", 0)),
        max_alloc=int(dev.max_mem_alloc_size),
        features=features,
        atomic_memory=int(_info(dev, "ATOMIC_MEMORY_CAPABILITIES", 0)),
        extensions=sorted(dev.extensions.split()),
        device_type=int(dev.type),
        base_addr_align_bits=int(_info(dev, "MEM_BASE_ADDR_ALIGN", 1024)),
        index=index,
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


def platform_devices(platform: cl.Platform, first: cl.Device) -> list[cl.Device]:
    """Every device of `platform`, `first` leading (as the CTS orders them)."""
    return [first, *(d for d in platform.get_devices() if d != first)]
