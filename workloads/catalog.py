"""The workload catalog: each workload names what it needs and verifies what it did."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyopencl as cl

from workloads.capabilities import NAMES, DeviceInfo, Svm

CL_STD = "-cl-std=CL3.0"  # CL2.0 breaks every atomic built-in on PoCL (docs/FIELD_NOTES.md)
# Only tests set this: every kernel then skips work-item 0 (SEED_SKIP in workloads.kernels),
# a wrong result each workload's verifier must catch.
SEED_OPTION = "-DSVMVAL_SEED_SKIP=1"
CPU_MMU = "the CPU's MMU (the device is a CPU device: PoCL runs kernels on the CPU), not the IOMMU"


class Skip(Exception):
    """The device lacks something the workload needs: the message names it."""


class Failed(AssertionError):
    """The workload ran and its data check failed."""


@dataclass
class Result:
    name: str
    category: str
    verdict: str = "pass"
    reason: str = ""
    needs: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    bandwidth: dict[str, float] = field(default_factory=dict)  # flavour -> bytes/s
    pages: list[dict[str, Any]] = field(default_factory=list)
    pages_total: int = 0
    pid: int = field(default_factory=os.getpid)
    cts: list[str] = field(default_factory=list)  # the OpenCL-CTS test(s) this workload covers
    devices: list[str] = field(default_factory=list)  # "index: name" of each device that ran it
    workarounds: list[dict[str, str]] = field(default_factory=list)  # {"what", "why"}: never silent
    exercises: str = ""  # what translation the workload really drives, when it is not the IOMMU
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


@dataclass
class Env:
    """What a workload runs against: a context with one device (or, with --devices all, every
    device of the platform: `devices`/`queues`, the first being `device`/`queue`), and the
    programs built in it, shared by all workloads."""

    platform: cl.Platform
    device: cl.Device
    info: DeviceInfo
    ctx: cl.Context
    queue: cl.CommandQueue
    soak_seconds: float = 2.0
    seed_fault: bool = False  # tests only: build every kernel with SEED_OPTION
    devices: list[cl.Device] = field(default_factory=list)
    infos: list[DeviceInfo] = field(default_factory=list)
    queues: list[cl.CommandQueue] = field(default_factory=list)
    active: list[int] = field(default_factory=list)  # devices able to run the current workload
    _programs: dict[str, cl.Program] = field(default_factory=dict)
    _kernels: dict[str, cl.Kernel] = field(default_factory=dict)
    build_notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.devices = self.devices or [self.device]
        self.infos = self.infos or [self.info]
        self.queues = self.queues or [self.queue]
        self.active = self.active or list(range(len(self.devices)))

    @property
    def options(self) -> str:
        return f"{CL_STD} {SEED_OPTION}" if self.seed_fault else CL_STD

    def program(self, source: str, options: str = "") -> cl.Program:
        key = source + "\0" + options
        if key not in self._programs:
            self._programs[key] = cl.Program(self.ctx, source).build(options=f"{self.options} {options}".strip())
        return self._programs[key]

    def kernel(self, source: str, name: str, options: str = "") -> cl.Kernel:
        """One kernel object per (program, name): retrieving it again rebuilds state."""
        key = f"{source}\0{options}\0{name}"
        if key not in self._kernels:
            self._kernels[key] = cl.Kernel(self.program(source, options), name)
        return self._kernels[key]

    def capable(self, *needs: Svm) -> list[int]:
        return [i for i, inf in enumerate(self.infos) if all(inf.has(n) for n in needs)]

    def require(self, *needs: Svm) -> None:
        if not self.capable(*needs):
            names = ", ".join(i.name for i in self.infos)
            missing = sorted({NAMES[n] for n in needs for i in self.infos if not i.has(n)})
            raise Skip(f"device {names!r} lacks {', '.join(missing)}")

    def main_queue(self) -> cl.CommandQueue:
        """The queue of the first device able to run the current workload."""
        return self.queues[self.active[0]]

    def participants(self) -> list[tuple[int, cl.CommandQueue]]:
        """(index, queue) of every device taking part in the current workload."""
        return [(i, self.queues[i]) for i in self.active]


@dataclass(frozen=True)
class Workload:
    name: str
    category: str
    needs: tuple[Svm, ...]
    run: Callable[[Env, Result], None]
    doc: str = ""
    cts: tuple[str, ...] = ()  # OpenCL-CTS test_svm names it covers
    cross_device: bool = False  # runs on every capable device of the context (--devices all)
    mmu_stress: bool = False  # pages are handled by whoever runs the kernel: the CPU's MMU on a CPU device


CATALOG: dict[str, Workload] = {}
_MODULES = ("workloads.edu_dma", "workloads.svm", "workloads.svm_api", "workloads.svm_atomics",
            "workloads.unified_svm", "workloads.stress", "workloads.sva")


def all_workloads() -> dict[str, Workload]:
    """The whole catalog, in run order (importing a module registers its workloads)."""
    import importlib

    for mod in _MODULES:
        importlib.import_module(mod)
    return CATALOG


Runner = Callable[[Env, Result], None]


def workload(name: str, category: str, *needs: Svm, cts: tuple[str, ...] = (), cross_device: bool = False,
             mmu_stress: bool = False) -> Callable[[Runner], Runner]:
    def register(fn: Callable[[Env, Result], None]) -> Callable[[Env, Result], None]:
        doc = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph
        if mmu_stress:
            doc += " On a CPU device (PoCL) this exercises the CPU's MMU, not the IOMMU."
        CATALOG[name] = Workload(name, category, needs, fn, doc, cts, cross_device, mmu_stress)
        return fn

    return register


def execute(wl: Workload, env: Env | None, env_error: str = "") -> Result:
    res = Result(wl.name, wl.category, needs=[NAMES[n] for n in wl.needs], cts=list(wl.cts))
    t0 = time.perf_counter()
    try:
        if env is None:
            if wl.needs:
                raise Skip(env_error or "no OpenCL device")
        else:
            if wl.mmu_stress and any(i.is_cpu for i in env.infos):
                res.exercises = CPU_MMU  # said even when skipped: it is what the workload would drive
            env.require(*wl.needs)
            capable = env.capable(*wl.needs)
            env.active = capable if wl.cross_device else capable[:1]
            res.devices = [env.infos[i].label for i in env.active]
        wl.run(env, res)  # type: ignore[arg-type]  # needs-free workloads take env=None
    except Skip as exc:
        res.verdict, res.reason = "skip", str(exc)
    except Failed as exc:
        res.verdict, res.reason = "fail", str(exc) or "data check failed"
    except cl.Error as exc:
        res.verdict, res.reason = "fail", f"OpenCL error: {exc}"
    except Exception as exc:  # a crash is a failed workload, never a lost result
        import traceback

        res.verdict, res.reason = "fail", f"crashed: {exc!r}"
        res.extra["traceback"] = traceback.format_exc()[-4000:]
    res.timings["total_s"] = round(time.perf_counter() - t0, 4)
    return res


def check(cond: bool, message: str) -> None:
    """A verification that can fail (not an assert: it must survive python -O)."""
    if not cond:
        raise Failed(message)
