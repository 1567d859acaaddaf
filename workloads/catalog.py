"""The workload catalog: each workload names what it needs and verifies what it did."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyopencl as cl

from workloads.capabilities import NAMES, DeviceInfo, Svm

CL_STD = "-cl-std=CL3.0"  # CL2.0 breaks every atomic built-in on PoCL (FIELD_NOTES)


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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


@dataclass
class Env:
    """What a workload runs against: one device, its context and queue, shared programs."""

    platform: cl.Platform
    device: cl.Device
    info: DeviceInfo
    ctx: cl.Context
    queue: cl.CommandQueue
    soak_seconds: float = 2.0
    _programs: dict[str, cl.Program] = field(default_factory=dict)
    _kernels: dict[str, cl.Kernel] = field(default_factory=dict)
    build_notes: list[str] = field(default_factory=list)

    def program(self, source: str, options: str = "") -> cl.Program:
        key = source + "\0" + options
        if key not in self._programs:
            self._programs[key] = cl.Program(self.ctx, source).build(options=f"{CL_STD} {options}".strip())
        return self._programs[key]

    def kernel(self, source: str, name: str, options: str = "") -> cl.Kernel:
        """One kernel object per (program, name): retrieving it again rebuilds state."""
        key = f"{source}\0{options}\0{name}"
        if key not in self._kernels:
            self._kernels[key] = cl.Kernel(self.program(source, options), name)
        return self._kernels[key]

    def require(self, *needs: Svm) -> None:
        missing = [NAMES[n] for n in needs if not self.info.has(n)]
        if missing:
            raise Skip(f"device {self.info.name!r} lacks {', '.join(missing)}")


@dataclass(frozen=True)
class Workload:
    name: str
    category: str
    needs: tuple[Svm, ...]
    run: Callable[[Env, Result], None]
    doc: str = ""


CATALOG: dict[str, Workload] = {}
_MODULES = ("workloads.edu_dma", "workloads.svm", "workloads.stress")


def all_workloads() -> dict[str, Workload]:
    """The whole catalog, in run order (importing a module registers its workloads)."""
    import importlib

    for mod in _MODULES:
        importlib.import_module(mod)
    return CATALOG


Runner = Callable[[Env, Result], None]


def workload(name: str, category: str, *needs: Svm) -> Callable[[Runner], Runner]:
    def register(fn: Callable[[Env, Result], None]) -> Callable[[Env, Result], None]:
        CATALOG[name] = Workload(name, category, needs, fn, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return register


def execute(wl: Workload, env: Env | None, env_error: str = "") -> Result:
    res = Result(wl.name, wl.category, needs=[NAMES[n] for n in wl.needs])
    t0 = time.perf_counter()
    try:
        if env is None:
            if wl.needs:
                raise Skip(env_error or "no OpenCL device")
        else:
            env.require(*wl.needs)
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
