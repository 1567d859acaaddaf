"""IOMMU-stress patterns: what makes page requests and invalidations happen.

Each needs fine-grain SYSTEM SVM (the device uses ordinary process memory, the
case where an SVM device faults pages in through the IOMMU: PRQ traffic on real
hardware) unless it says otherwise.

On a CPU device (PoCL) the kernels run on the CPU: the pages are faulted in and
translated by the CPU's MMU (the guest's, in a VM), never by the IOMMU. Each result
says so in `exercises`; only an SVM device behind the IOMMU makes these IOMMU tests.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import time

import numpy as np
import pyopencl as cl

from workloads.capabilities import Svm
from workloads.catalog import CL_STD, SEED_OPTION, Env, Failed, Result, Skip, check, workload
from workloads.kernels import SOURCE as KERNELS
from workloads.pages import PAGE, page_records

FIRST_TOUCH_BYTES = 16 << 20
HUGE = 2 << 20


def _anon(size: int) -> tuple[mmap.mmap, np.ndarray]:
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return m, np.frombuffer(m, dtype=np.uint32)


@workload("first_touch", "iommu stress: first touch", Svm.FINE_GRAIN_SYSTEM, mmu_stress=True)
def first_touch(env: Env, res: Result) -> None:
    """The device is the first to touch every page of a fresh anonymous mapping."""
    m, a = _anon(FIRST_TOUCH_BYTES)
    stride = PAGE // 4
    pages = FIRST_TOUCH_BYTES // PAGE
    t0 = time.perf_counter()
    env.kernel(KERNELS, "touch")(env.main_queue(), (pages,), None, cl.SVM(a), np.uint32(stride))
    env.main_queue().finish()
    res.timings["first_touch_s"] = round(time.perf_counter() - t0, 4)
    res.extra["first_touch_pages_per_s"] = round(pages / max(res.timings["first_touch_s"], 1e-9), 1)
    check(bool((a[::stride] == np.arange(1, pages + 1, dtype=np.uint32)).all()), "first-touch values wrong")
    res.pages, res.pages_total = page_records(a.ctypes.data, FIRST_TOUCH_BYTES)
    res.extra["first_touch"] = True  # the host predicts one page request per page
    del a
    m.close()


@workload("remap_between_launches", "iommu stress: munmap/remap", Svm.FINE_GRAIN_SYSTEM, mmu_stress=True)
def remap(env: Env, res: Result) -> None:
    """munmap and mmap again between kernel launches: the device must see the new pages
    (a device using a stale translation would read the old, freed page)."""
    size = 64 * PAGE
    for round_ in range(4):
        m, a = _anon(size)
        a[:] = round_ + 1
        env.kernel(KERNELS, "scale")(env.main_queue(), (a.size,), None, cl.SVM(a.view(np.int32)), np.int32(3))
        env.main_queue().finish()
        check(bool((a == 3 * (round_ + 1)).all()), f"round {round_}: device used the previous mapping's data")
        if round_ == 3:
            res.pages, res.pages_total = page_records(a.ctypes.data, size, content=a.tobytes())
        del a
        m.close()


@workload("fork_cow", "iommu stress: fork + copy-on-write", Svm.FINE_GRAIN_SYSTEM, mmu_stress=True)
def fork_cow(env: Env, res: Result) -> None:
    """A child writes its copy-on-write copy of SVM-shared memory; the parent's device
    view must not change."""
    m, a = _anon(16 * PAGE)
    a[:] = 5
    q = env.main_queue()
    env.kernel(KERNELS, "scale")(q, (a.size,), None, cl.SVM(a.view(np.int32)), np.int32(1))  # device maps it
    q.finish()
    pid = os.fork()
    if pid == 0:  # child: touch its copy and leave without running any OpenCL
        a[:] = 99
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    check(os.waitstatus_to_exitcode(status) == 0, "child failed")
    env.kernel(KERNELS, "scale")(env.main_queue(), (a.size,), None, cl.SVM(a.view(np.int32)), np.int32(2))
    env.main_queue().finish()
    check(bool((a == 10).all()), "the child's copy-on-write writes leaked into the parent's SVM view")
    res.pages, res.pages_total = page_records(a.ctypes.data, a.nbytes, content=a.tobytes())
    del a
    m.close()


def _huge_page_kib(addr: int) -> int:
    """AnonHugePages (KiB) of the mapping holding `addr`, from /proc/self/smaps."""
    current = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                current = lo <= addr < hi
            elif current and head == "AnonHugePages:":
                return int(line.split()[1])
    return 0


@workload("huge_pages_2m", "iommu stress: 2 MiB pages", Svm.FINE_GRAIN_SYSTEM, mmu_stress=True)
def huge_pages(env: Env, res: Result) -> None:
    """Transparent 2 MiB pages shared with the device."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        raise Skip("this Python has no MADV_HUGEPAGE")
    try:
        mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        raise Skip("no transparent huge pages in this kernel") from None
    if "[never]" in mode:
        raise Skip("transparent huge pages are disabled ([never])")
    m = mmap.mmap(-1, 2 * HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_HUGEPAGE)
    whole = np.frombuffer(m, dtype=np.uint8)
    off = (-whole.ctypes.data) % HUGE
    a = whole[off : off + HUGE].view(np.int32)
    a[:] = 7  # the host's first touch faults the huge page in
    kib = _huge_page_kib(a.ctypes.data)
    if kib < HUGE // 1024:
        raise Skip(f"the kernel gave no 2 MiB page (AnonHugePages {kib} kB, THP mode {mode.strip()})")
    env.kernel(KERNELS, "scale")(env.main_queue(), (a.size,), None, cl.SVM(a), np.int32(6))
    env.main_queue().finish()
    check(bool((a == 42).all()), "device writes to a 2 MiB page wrong")
    res.pages, res.pages_total = page_records(a.ctypes.data, HUGE)
    for p in res.pages:
        p["size"] = HUGE
    res.extra["huge_kib"] = kib
    del a, whole
    m.close()


def _child(device_name: str, k: int, q: mp.Queue, options: str) -> None:
    try:
        from workloads.capabilities import select_device

        platform, dev, _info = select_device(device_name)
        ctx = cl.Context([dev])
        queue = cl.CommandQueue(ctx)
        prg = cl.Program(ctx, KERNELS).build(options=options)
        a = cl.fsvm_empty(ctx, 4096, np.int32)
        a[:] = np.arange(1, 4097, dtype=np.int32)
        cl.Kernel(prg, "scale")(queue, (4096,), None, cl.SVM(a), np.int32(k))
        queue.finish()
        q.put((k, bool((a == k * np.arange(1, 4097)).all()), os.getpid()))
    except Exception as exc:  # reported to the parent, which fails the workload
        q.put((k, False, repr(exc)))


@workload("multi_process", "iommu stress: several processes", Svm.FINE_GRAIN_BUFFER, mmu_stress=True)
def multi_process(env: Env, res: Result) -> None:
    """Several processes with their own contexts at once (several PASIDs on SVM hardware)."""
    ctx = mp.get_context("spawn")  # OpenCL state must not be forked
    q: mp.Queue = ctx.Queue()
    options = f"{CL_STD} {SEED_OPTION}" if env.seed_fault else CL_STD
    procs = [ctx.Process(target=_child, args=(env.info.name, k, q, options)) for k in (2, 3)]
    for p in procs:
        p.start()
    got = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    for k, ok, who in got:
        if not ok:
            raise Failed(f"process {k} ({who}) got wrong data")
    res.extra["pids"] = sorted(str(w) for _k, _ok, w in got)


@workload("soak", "iommu stress: soak", Svm.FINE_GRAIN_BUFFER, mmu_stress=True)
def soak(env: Env, res: Result) -> None:
    """Allocate, use, verify and free fine-grain buffers for a bounded time."""
    deadline = time.monotonic() + env.soak_seconds
    rounds = 0
    while time.monotonic() < deadline or rounds == 0:
        a = cl.fsvm_empty(env.ctx, 1 << 14, np.int32)
        a[:] = rounds + 1
        env.kernel(KERNELS, "scale")(env.main_queue(), (a.size,), None, cl.SVM(a), np.int32(3))
        env.main_queue().finish()
        check(bool((a == 3 * (rounds + 1)).all()), f"soak round {rounds}: wrong values")
        del a
        rounds += 1
    res.extra["rounds"] = rounds
