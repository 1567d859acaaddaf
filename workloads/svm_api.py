"""The SVM API half of OpenCL-CTS test_svm: allocation flags, enqueued SVM commands,
migration, the negative cases and the newer corner cases. Return codes are judged as the
driver gives them (workloads.clapi calls the entry points directly); every workload also
moves data through a kernel and checks it."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyopencl as cl

from workloads import clapi
from workloads.capabilities import UNIFIED_SVM, Svm
from workloads.catalog import Env, Result, Skip, check, workload
from workloads.kernels import SOURCE
from workloads.svm import BW_N, agent_name, svm_bw, timed_best

RW, WO, RO = clapi.MEM_READ_WRITE, clapi.MEM_WRITE_ONLY, clapi.MEM_READ_ONLY
FINE, ATOM = clapi.MEM_SVM_FINE_GRAIN_BUFFER, clapi.MEM_SVM_ATOMICS
FLAG_NAMES = {RW: "CL_MEM_READ_WRITE", WO: "CL_MEM_WRITE_ONLY", RO: "CL_MEM_READ_ONLY",
              FINE: "CL_MEM_SVM_FINE_GRAIN_BUFFER", ATOM: "CL_MEM_SVM_ATOMICS"}
# The CTS's combinations: each access flag alone, with fine grain, with fine grain + atomics, and 0.
FLAG_SETS = [acc | extra for extra in (0, FINE, FINE | ATOM) for acc in (RW, WO, RO)] + [0]


def flag_name(flags: int) -> str:
    return " | ".join(n for bit, n in FLAG_NAMES.items() if flags & bit) or "0"


@contextmanager
def svm_alloc(env: Env, flags: int, size: int, what: str) -> Iterator[int]:
    """clSVMAlloc that must not return NULL, freed on the way out."""
    ptr = clapi.svm_alloc(env.ctx, flags, size)
    check(ptr != 0, f"clSVMAlloc({what}) returned NULL")
    try:
        yield ptr
    finally:
        clapi.svm_free(env.ctx, ptr)


def usable_flag_sets(env: Env, res: Result) -> list[int]:
    """The combinations the device allows; the others are listed in the result, not tried."""
    info = env.infos[env.active[0]]
    ok, skipped = [], []
    for f in FLAG_SETS:
        if (f & FINE and not info.has(Svm.FINE_GRAIN_BUFFER)) or (f & ATOM and not info.has(Svm.ATOMICS)):
            skipped.append(flag_name(f))
        else:
            ok.append(f)
    res.extra["flags_tried"] = [flag_name(f) for f in ok]
    if skipped:
        res.extra["flags_not_offered"] = skipped
    return ok


def _wrap(mem: int) -> cl.Buffer:
    buf: cl.Buffer = cl.Buffer.from_int_ptr(mem, retain=False)  # type: ignore[assignment]
    return buf


def _mapped(q: cl.CommandQueue, buf: cl.Buffer, count: int, flags: Any) -> tuple[np.ndarray, Any]:
    mapped: Any = cl.enqueue_map_buffer(q, buf, flags, 0, (count,), np.uint32)
    arr = mapped[0]
    return arr, arr.base


@workload("svm_allocate_shared_buffer", "shared buffer allocation", Svm.COARSE_GRAIN_BUFFER,
          cts=("svm_allocate_shared_buffer",))
def allocate_shared_buffer(env: Env, res: Result) -> None:
    """clSVMAlloc with every flag combination the device allows; a cl_mem made on it with
    CL_MEM_USE_HOST_PTR maps to the same pointer, and a kernel's writes through the cl_mem
    are what the host reads there."""
    q = env.main_queue()
    size, count = 1024, 256
    iota = env.kernel(SOURCE, "iota")
    for flags in usable_flag_sets(env, res):
        with svm_alloc(env, flags, size, flag_name(flags)) as ptr:
            mem, err = clapi.create_buffer(env.ctx, clapi.MEM_USE_HOST_PTR, size, ptr)
            check(err == 0, f"clCreateBuffer(USE_HOST_PTR) on {flag_name(flags)} SVM failed: {err}")
            buf = _wrap(mem)
            if not flags & (WO | RO):  # the device may write it: data through both names
                iota(q, (count,), None, buf, np.uint32(flags))
            arr, mapping = _mapped(q, buf, count, cl.map_flags.READ)
            try:
                check(arr.ctypes.data == ptr, f"{flag_name(flags)}: clEnqueueMapBuffer gave {arr.ctypes.data:#x}, "
                      f"clSVMAlloc {ptr:#x}")
                if not flags & (WO | RO):
                    bad = np.flatnonzero(arr != flags + np.arange(count, dtype=np.uint32))
                    check(bad.size == 0, f"{flag_name(flags)}: {bad.size} words wrong after the kernel")
            finally:
                mapping.release(q)
            q.finish()
            buf.release()


@workload("svm_allocate_shared_buffer_negative", "shared buffer allocation", Svm.COARSE_GRAIN_BUFFER,
          cts=("svm_allocate_shared_buffer_negative",))
def allocate_shared_buffer_negative(env: Env, res: Result) -> None:
    """A cl_mem larger than the SVM allocation it wraps is refused with CL_INVALID_BUFFER_SIZE
    (each flag combination); the allocation still works at its own size."""
    q = env.main_queue()
    size, count = 1024, 256
    iota = env.kernel(SOURCE, "iota")
    for flags in usable_flag_sets(env, res):
        with svm_alloc(env, flags, size, flag_name(flags)) as ptr:
            mem, err = clapi.create_buffer(env.ctx, clapi.MEM_USE_HOST_PTR, 2 * size, ptr)
            clapi.release_mem(mem)
            check(err == clapi.CL_INVALID_BUFFER_SIZE, f"{flag_name(flags)}: clCreateBuffer of twice the SVM "
                  f"size returned {err}, not CL_INVALID_BUFFER_SIZE ({clapi.CL_INVALID_BUFFER_SIZE})")
            if flags & (WO | RO):
                continue
            mem, err = clapi.create_buffer(env.ctx, clapi.MEM_USE_HOST_PTR, size, ptr)
            check(err == 0, f"{flag_name(flags)}: clCreateBuffer at the SVM size failed: {err}")
            buf = _wrap(mem)
            iota(q, (count,), None, buf, np.uint32(1))
            arr, mapping = _mapped(q, buf, count, cl.map_flags.READ)
            ok = bool((arr == 1 + np.arange(count, dtype=np.uint32)).all())
            mapping.release(q)
            q.finish()
            buf.release()
            check(ok, f"{flag_name(flags)}: wrong data after the refused oversize buffer")


# Run in a child first: PoCL 6.0 (Debian trixie) dies with SIGSEGV on an overlapping
# clEnqueueSVMMemcpy instead of returning CL_MEM_COPY_OVERLAP (seen in svmval's guest), and
# a crash would take the whole runner with it.
_OVERLAP_PROBE = """
import sys, numpy as np, pyopencl as cl
from workloads import clapi
from workloads.capabilities import select_device
p, d, _ = select_device(sys.argv[1] if len(sys.argv) > 1 else None)
ctx = cl.Context([d]); q = cl.CommandQueue(ctx)
a = cl.csvm_empty(ctx, 16, np.uint32)
err, ev = clapi.enqueue_svm_memcpy(q, a.ctypes.data + 16, a.ctypes.data, 32)
print(err)
"""


def _overlap_crashes_the_driver(env: Env) -> str:
    """Why the negative memcpy cannot run on this driver ("" when it can)."""
    info = env.infos[env.active[0]]
    proc = subprocess.run([sys.executable, "-c", _OVERLAP_PROBE, info.name], capture_output=True, text=True,
                          timeout=300, check=False, cwd=str(Path(__file__).resolve().parent.parent))
    if proc.returncode >= 0:
        return ""
    return (f"the driver ({info.version}) is killed by signal {-proc.returncode} on an overlapping "
            "clEnqueueSVMMemcpy instead of returning CL_MEM_COPY_OVERLAP: a driver bug, the negative "
            "case cannot be judged here")


@workload("svm_negative_memcpy_overlap", "enqueue API", Svm.COARSE_GRAIN_BUFFER,
          cts=("svm_negative_memcpy_overlap",))
def negative_memcpy_overlap(env: Env, res: Result) -> None:
    """clEnqueueSVMMemcpy with overlapping source and destination (tail over head, head over
    tail, identical) returns CL_MEM_COPY_OVERLAP and leaves the data alone."""
    crash = _overlap_crashes_the_driver(env)
    if crash:
        res.extra["driver_bug"] = crash
        raise Skip(crash)
    q = env.main_queue()
    words = 16  # 64 bytes: the CTS's 2 x 32
    a = cl.csvm_empty(env.ctx, words, np.uint32)
    env.kernel(SOURCE, "iota")(q, (words,), None, cl.SVM(a), np.uint32(100))
    q.finish()
    base, n = a.ctypes.data, 32
    for what, dst, src in (("end of source over start of destination", base + n // 2, base),
                           ("start of source over end of destination", base, base + n // 2),
                           ("source is destination", base, base)):
        err, ev = clapi.enqueue_svm_memcpy(q, dst, src, n)
        clapi.wait_and_release(ev)
        check(err == clapi.CL_MEM_COPY_OVERLAP,
              f"{what}: clEnqueueSVMMemcpy returned {err}, not CL_MEM_COPY_OVERLAP ({clapi.CL_MEM_COPY_OVERLAP})")
    with cl.SVM(a).map_ro(q) as m:
        bad = np.flatnonzero(m != 100 + np.arange(words, dtype=np.uint32))
        check(bad.size == 0, f"{bad.size} words changed by refused overlapping copies (or the kernel's fill)")


@workload("svm_enqueue_api", "enqueue API", Svm.COARSE_GRAIN_BUFFER, cts=("svm_enqueue_api",))
def enqueue_api(env: Env, res: Result) -> None:
    """clEnqueueSVMMemFill with 1- to 128-byte patterns, clEnqueueSVMMemcpy SVM<->SVM and
    host<->SVM, SVM map/unmap, clEnqueueSVMFree, each event's command type; a kernel over
    the copy (bandwidth: memcpy)."""
    q = env.main_queue()
    nbytes = 1 << 16
    src = cl.csvm_empty(env.ctx, nbytes, np.uint8)
    dst = cl.csvm_empty(env.ctx, nbytes, np.uint8)
    rng = np.random.default_rng(11)
    types: dict[str, int] = {}
    for psize in (1, 2, 4, 8, 16, 32, 64, 128):
        pattern = rng.integers(0, 256, psize, dtype=np.uint8)
        ev = cl.enqueue_svm_memfill(q, cl.SVM(src), pattern)
        types["memfill"] = ev.command_type
        ev = cl.enqueue_copy(q, cl.SVM(dst), cl.SVM(src))
        types["memcpy"] = ev.command_type
        mapping = cl.SVM(dst).map_ro(q)
        mapping.event.wait()
        types["map"] = mapping.event.command_type
        ok = bool((mapping.array == np.tile(pattern, nbytes // psize)).all())
        mapping.release()
        check(ok, f"memfill with a {psize}-byte pattern then memcpy gave wrong bytes")
    host = rng.integers(0, 256, nbytes, dtype=np.uint8)
    cl.enqueue_copy(q, cl.SVM(src), host)  # host -> SVM
    back = np.zeros_like(host)
    cl.enqueue_copy(q, back, cl.SVM(src))  # SVM -> host
    q.finish()
    check(bool((back == host).all()), "host -> SVM -> host memcpy changed the data")
    ints: Any = np.asarray(dst).view(np.uint32)
    env.kernel(SOURCE, "iota")(q, (ints.size,), None, cl.SVM(ints), np.uint32(5))
    cl.enqueue_copy(q, cl.SVM(src), cl.SVM(dst))
    with cl.SVM(src).map_ro(q) as s:
        bad = np.flatnonzero(s.view(np.uint32) != 5 + np.arange(ints.size, dtype=np.uint32))
        check(bad.size == 0, f"kernel then memcpy: {bad.size} words wrong")
    ptrs = [clapi.svm_alloc(env.ctx, RW, 4096) for _ in range(2)]
    check(all(ptrs), "clSVMAlloc for clEnqueueSVMFree returned NULL")
    err, free_ev = clapi.enqueue_svm_free(q, ptrs)
    check(err == 0, f"clEnqueueSVMFree failed: {err}")
    types["free"] = clapi.event_info_uint(free_ev, clapi.CL_EVENT_COMMAND_TYPE)
    clapi.wait_and_release(free_ev)
    want = {"memfill": clapi.CL_COMMAND_SVM_MEMFILL, "memcpy": clapi.CL_COMMAND_SVM_MEMCPY,
            "map": clapi.CL_COMMAND_SVM_MAP, "free": clapi.CL_COMMAND_SVM_FREE}
    wrong = {k: hex(v) for k, v in types.items() if v != want[k]}
    check(not wrong, f"event command types wrong: {wrong}")
    big_src = cl.csvm_empty(env.ctx, BW_N, np.int32)
    big_dst = cl.csvm_empty(env.ctx, BW_N, np.int32)

    def copy() -> None:
        cl.enqueue_copy(q, cl.SVM(big_dst), cl.SVM(big_src))
        q.finish()

    res.bandwidth["memcpy"] = svm_bw(big_src.nbytes, timed_best(copy))


def _migrate(q: cl.CommandQueue, ptrs: list[int], sizes: list[int] | None, flags: int,
             log: list[dict[str, Any]], where: str) -> None:
    err, ev = clapi.enqueue_svm_migrate(q, ptrs, sizes, flags)
    check(err == 0, f"clEnqueueSVMMigrateMem to {where} failed: {err}")
    kind = clapi.event_info_uint(ev, clapi.CL_EVENT_COMMAND_TYPE)
    clapi.wait(ev)
    status = clapi.event_info_uint(ev, clapi.CL_EVENT_COMMAND_EXECUTION_STATUS)
    clapi.release_event(ev)
    check(kind == clapi.CL_COMMAND_SVM_MIGRATE_MEM, f"migration event has command type {kind:#x}")
    check(status == clapi.CL_COMPLETE, f"migration event ended in status {status}, not CL_COMPLETE")
    log.append({"to": where, "ranges": len(ptrs), "bytes": sum(sizes) if sizes else "whole",
                "flags": flags, "event": "CL_COMPLETE"})


@workload("svm_migrate", "migrate", Svm.COARSE_GRAIN_BUFFER, cts=("svm_migrate",), cross_device=True)
def migrate(env: Env, res: Result) -> None:
    """clEnqueueSVMMigrateMem of whole allocations and of odd sub-ranges, to the host and to
    the device(s), between kernels on two queues (two devices when the context has them): every
    migration's event completes, and the contents are right on the device (the kernels' sums)
    and on the host."""
    agents = env.participants()
    q0 = agents[0][1]
    q1 = agents[1][1] if len(agents) > 1 else cl.CommandQueue(env.ctx, env.devices[agents[0][0]])
    where1 = agent_name(env, agents[1][0]) if len(agents) > 1 else f"{agent_name(env, agents[0][0])}, 2nd queue"
    where0 = agent_name(env, agents[0][0])
    n = 1 << 14
    bufs = [cl.csvm_empty(env.ctx, n, np.uint32) for _ in range(3)]
    a, b, c = (x.ctypes.data for x in bufs)
    log: list[dict[str, Any]] = []
    for x in bufs:
        cl.enqueue_svm_memfill(q0, cl.SVM(x), np.zeros(4, np.uint32))
    q0.finish()
    _migrate(q1, [a, b, c], None, clapi.MIGRATE_CONTENT_UNDEFINED, log, where1)
    _migrate(q0, [a + 1, b + 3, c + 5], [1, 1, 0], clapi.MIGRATE_HOST, log, "host")
    rng = np.random.default_rng(3)
    data = [rng.integers(0, 1 << 31, n, dtype=np.uint32) for _ in bufs]
    for x, d in zip(bufs, data, strict=True):
        with cl.SVM(x).map_rw(q1) as m:
            m[:] = d
    add3 = env.kernel(SOURCE, "add3")
    args = [cl.SVM(x) for x in bufs]
    steps = [(q0, where0, [a + 100, b + 17, c + 1000, a + 101, b + 19, c + 1017], [13, 23, 43, 3, 7, 11], 1),
             (q1, where1, [a + 8, b + 17, c + 31, c + 83], [0, 1, 3, 7], 2),
             (q0, where0, [a + 64, a + 128, b + 64, b + 128, c, c + 64], [64] * 6, 4),
             (q1, where1, [a, b, c], None, 8)]
    for q, where, ptrs, sizes, k in steps:
        _migrate(q, ptrs, sizes, 0, log, where)
        add3(q, (n,), None, *args, np.uint32(k))
        q.finish()
    _migrate(q1, [a, b, c], None, clapi.MIGRATE_HOST, log, "host")
    total = 1 + 2 + 4 + 8
    for name, x, d, mul in zip("abc", bufs, data, (1, 2, 3), strict=True):
        with cl.SVM(x).map_ro(q0) as m:
            bad = np.flatnonzero(m != d + np.uint32(mul * total))
            check(bad.size == 0, f"buffer {name}: {bad.size} words wrong after the migrations and kernels "
                  f"(first at {bad[:1].tolist()})")
    res.extra["migrations"] = log


def _corner_cases(env: Env, flags: int) -> None:
    q = env.main_queue()
    what = flag_name(flags | RW)
    zero = clapi.svm_alloc(env.ctx, flags | RW, 0)
    clapi.svm_free(env.ctx, zero)  # must not crash, whatever it returned
    clapi.svm_free(env.ctx, None)
    for ptrs in ([], [None]):
        err, ev = clapi.enqueue_svm_free(q, ptrs)
        check(err == 0, f"clEnqueueSVMFree({len(ptrs)} pointer(s), {'NULL' if ptrs else 'empty'}) failed: {err}")
        kind = clapi.event_info_uint(ev, clapi.CL_EVENT_COMMAND_TYPE)
        clapi.wait_and_release(ev)
        check(kind == clapi.CL_COMMAND_SVM_FREE, f"clEnqueueSVMFree event type {kind:#x}")
    ptr = clapi.svm_alloc(env.ctx, flags | RW, 4)
    check(ptr != 0, f"clSVMAlloc({what}, 4) returned NULL")
    value = ctypes.c_int(42)
    try:
        calls = [("clEnqueueSVMMemFill size 0", clapi.CL_COMMAND_SVM_MEMFILL,
                  lambda: clapi.enqueue_svm_memfill(q, ptr, bytes(value), 0)),
                 ("clEnqueueSVMMemcpy to SVM size 0", clapi.CL_COMMAND_SVM_MEMCPY,
                  lambda: clapi.enqueue_svm_memcpy(q, ptr, ctypes.addressof(value), 0)),
                 ("clEnqueueSVMMemcpy from SVM size 0", clapi.CL_COMMAND_SVM_MEMCPY,
                  lambda: clapi.enqueue_svm_memcpy(q, ctypes.addressof(value), ptr, 0)),
                 ("clEnqueueSVMMigrateMem size 0", clapi.CL_COMMAND_SVM_MIGRATE_MEM,
                  lambda: clapi.enqueue_svm_migrate(q, [ptr], [0], clapi.MIGRATE_CONTENT_UNDEFINED)),
                 ("clEnqueueSVMMigrateMem NULL, size 0", clapi.CL_COMMAND_SVM_MIGRATE_MEM,
                  lambda: clapi.enqueue_svm_migrate(q, [None], [0], clapi.MIGRATE_CONTENT_UNDEFINED)),
                 ("clEnqueueSVMMigrateMem NULL, NULL sizes", clapi.CL_COMMAND_SVM_MIGRATE_MEM,
                  lambda: clapi.enqueue_svm_migrate(q, [None], None, clapi.MIGRATE_CONTENT_UNDEFINED))]
        for label, want, call in calls:
            err, ev = call()
            check(err == 0, f"{what}: {label} failed: {err}")
            kind = clapi.event_info_uint(ev, clapi.CL_EVENT_COMMAND_TYPE)
            clapi.wait_and_release(ev)
            check(kind == want, f"{what}: {label} gave an event of type {kind:#x}, not {want:#x}")
        knl = env.kernel(SOURCE, "iota")
        unset: list[tuple[str, list[int | None] | None]] = [("empty set", None), ("a NULL pointer", [None])]
        for label, null_ptrs in unset:
            err = clapi.set_exec_info_svm_ptrs(knl, null_ptrs)
            check(err == 0, f"clSetKernelExecInfo(SVM_PTRS) with {label} failed: {err}")
        out = cl.csvm_empty(env.ctx, 64, np.uint32)
        knl(q, (64,), None, cl.SVM(out), np.uint32(9))
        with cl.SVM(out).map_ro(q) as m:
            check(bool((m == 9 + np.arange(64, dtype=np.uint32)).all()), "kernel after the corner cases: wrong data")
    finally:
        clapi.svm_free(env.ctx, ptr)


@workload("svm_corner_cases", "corner cases", Svm.COARSE_GRAIN_BUFFER, cts=("svm_corner_cases",))
def corner_cases(env: Env, res: Result) -> None:
    """Zero-size clSVMAlloc/clSVMFree(NULL), clEnqueueSVMFree of an empty set and of NULL,
    zero-size memfill/memcpy/migrate, clSetKernelExecInfo with an empty set and NULL: all
    succeed with the right event type (for each SVM kind the device offers)."""
    info = env.infos[env.active[0]]
    if UNIFIED_SVM not in info.extensions:
        # The CTS runs these only with the extension: before it the spec leaves zero sizes
        # ambiguous (PoCL 3.1 answers CL_INVALID_VALUE, also allowed).
        raise Skip(f"device {info.name!r} lacks {UNIFIED_SVM} (zero-size SVM calls are defined only with it)")
    kinds = [0]
    if info.has(Svm.FINE_GRAIN_BUFFER):
        kinds.append(FINE)
    if info.has(Svm.FINE_GRAIN_BUFFER | Svm.ATOMICS):
        kinds.append(FINE | ATOM)
    for flags in kinds:
        _corner_cases(env, flags)
    res.extra["kinds"] = [flag_name(f | RW) for f in kinds]


@workload("svm_buffer_address_equivalence", "shared address space", Svm.COARSE_GRAIN_BUFFER,
          cts=("svm_buffer_address_equivalence",))
def buffer_address_equivalence(env: Env, res: Result) -> None:
    """A cl_mem made on an SVM pointer (CL_MEM_USE_HOST_PTR), a sub-buffer of it and a cl_mem made
    at an offset into it reach the kernel as the very SVM addresses (for each SVM kind offered)."""
    info = env.infos[env.active[0]]
    q = env.main_queue()
    align = max(info.base_addr_align_bits // 8, 4)
    size = max(4 * align, 1 << 16)
    kinds = [0]
    if info.has(Svm.FINE_GRAIN_BUFFER):
        kinds.append(FINE)
    if info.has(Svm.FINE_GRAIN_BUFFER | Svm.ATOMICS):
        kinds.append(FINE | ATOM)
    out = cl.Buffer(env.ctx, cl.mem_flags.READ_WRITE, 8)
    knl = env.kernel(SOURCE, "store_ptr")

    def seen(buf: cl.Buffer) -> int:
        got = np.zeros(1, np.uint64)
        cl.enqueue_copy(q, out, got)
        knl(q, (1,), None, buf, out)
        cl.enqueue_copy(q, got, out)
        q.finish()
        return int(got[0])

    for flags in kinds:
        what = flag_name(flags | RW)
        with svm_alloc(env, flags | RW, size, what) as ptr:
            mem, err = clapi.create_buffer(env.ctx, RW | clapi.MEM_USE_HOST_PTR, size, ptr)
            check(err == 0, f"{what}: clCreateBuffer on the SVM pointer failed: {err}")
            whole = _wrap(mem)
            got = seen(whole)
            check(got == ptr, f"{what}: the kernel sees the buffer at {got:#x}, SVM pointer {ptr:#x}")
            sub = whole.get_sub_region(align, align)
            got = seen(sub)
            check(got == ptr + align, f"{what}: sub-buffer at {got:#x}, expected {ptr + align:#x}")
            sub.release()
            whole.release()
            mem, err = clapi.create_buffer(env.ctx, RW | clapi.MEM_USE_HOST_PTR, size - align, ptr + align)
            check(err == 0, f"{what}: clCreateBuffer at an offset into the SVM allocation failed: {err}")
            off = _wrap(mem)
            got = seen(off)
            off.release()
            check(got == ptr + align, f"{what}: offset buffer at {got:#x}, expected {ptr + align:#x}")
    res.extra["kinds"] = [flag_name(f | RW) for f in kinds]
