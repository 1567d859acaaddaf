"""OpenCL 2.0 SVM semantics: the shared-address-space half of OpenCL-CTS test_svm (written
for svmval from what each CTS test checks; each verifies its data and skips naming what
the device lacks). With --devices all the cross-device ones run on every capable device
of the context, creating on each agent (device or host) and verifying on each."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import pyopencl as cl

from workloads import clapi
from workloads.capabilities import Svm
from workloads.catalog import Env, Failed, Result, check, workload
from workloads.kernels import SOURCE
from workloads.pages import page_records

N = 4096
BW_N = 1 << 18  # ints per bandwidth buffer (1 MiB): large enough that a launch is not all overhead
BW_ROUNDS = 3
NUM_LISTS, LIST_LEN = 64, 16
NODE = np.dtype([("gid", "<i4"), ("pos", "<i4"), ("next", "<u8")])
HOST = -1  # the host as an agent in the create/verify matrix
RW_MAP: Any = cl.map_flags.READ | cl.map_flags.WRITE


def svm_bw(nbytes: int, seconds: float) -> float:
    return round(nbytes / seconds, 1) if seconds > 0 else 0.0


def timed_best(run: Any, rounds: int = BW_ROUNDS) -> float:
    """Best wall time of `rounds` calls after one warm-up (the first launch pays set-up)."""
    run()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def agent_name(env: Env, agent: int) -> str:
    return "host" if agent == HOST else f"device {env.infos[agent].label}"


@workload("svm_coarse_buffer", "shared buffer allocation", Svm.COARSE_GRAIN_BUFFER)
def coarse_buffer(env: Env, res: Result) -> None:
    """Coarse-grain SVM buffer: map, fill on the host, unmap, kernel, map and verify (bandwidth: coarse)."""
    q = env.main_queue()
    a = cl.csvm_empty(env.ctx, BW_N, np.int32)
    svm = cl.SVM(a)
    with svm.map_rw(q) as m:
        m[:] = 1
    knl = env.kernel(SOURCE, "scale")

    def launch() -> None:
        knl(q, (BW_N,), None, svm, np.int32(1))
        q.finish()

    res.bandwidth["coarse"] = svm_bw(2 * a.nbytes, timed_best(launch))
    with svm.map_rw(q) as m:
        m[:] = np.arange(1, BW_N + 1, dtype=np.int32)
    knl(q, (BW_N,), None, svm, np.int32(3))
    with svm.map_ro(q) as m:
        check(bool((m == 3 * np.arange(1, BW_N + 1)).all()), "coarse-grain buffer: wrong values after the kernel")
        res.pages, res.pages_total = page_records(a.ctypes.data, a.nbytes)


@workload("svm_fine_buffer", "shared buffer allocation", Svm.FINE_GRAIN_BUFFER)
def fine_buffer(env: Env, res: Result) -> None:
    """Fine-grain SVM buffer: host and device use it with no map/unmap (bandwidth: fine)."""
    q = env.main_queue()
    a = cl.fsvm_empty(env.ctx, BW_N, np.int32)
    a[:] = 1
    knl = env.kernel(SOURCE, "scale")

    def launch() -> None:
        knl(q, (BW_N,), None, cl.SVM(a), np.int32(1))
        q.finish()

    res.bandwidth["fine"] = svm_bw(2 * a.nbytes, timed_best(launch))
    a[:] = np.arange(1, BW_N + 1, dtype=np.int32)
    knl(q, (BW_N,), None, cl.SVM(a), np.int32(5))
    q.finish()
    check(bool((a == 5 * np.arange(1, BW_N + 1)).all()), "fine-grain buffer: host does not see the device's writes")
    res.pages, res.pages_total = page_records(a.ctypes.data, a.nbytes, content=a.tobytes())


@workload("svm_byte_granularity", "byte granularity", Svm.FINE_GRAIN_BUFFER,
          cts=("svm_byte_granularity",), cross_device=True)
def byte_granularity(env: Env, res: Result) -> None:
    """Each device and the host write the bytes they own (round robin) of one fine-grain buffer
    at once; every device and the host then see all the others' bytes."""
    agents = env.participants()
    num_id = len(agents) + 1  # the host takes the last id
    a = cl.fsvm_empty(env.ctx, N, np.int8)
    a[:] = -1
    write = env.kernel(SOURCE, "write_owned")
    for d, (_i, q) in enumerate(agents):
        write(q, (N,), None, cl.SVM(a), np.uint32(num_id), np.uint32(d))
    for _i, q in agents:
        q.flush()
    a[num_id - 1 :: num_id] = num_id - 1  # the host's bytes, while the devices write theirs
    for _i, q in agents:
        q.finish()
    errors = [cl.fsvm_empty(env.ctx, 1, np.uint32) for _ in agents]
    summ = env.kernel(SOURCE, "sum_neighbours")
    for (_i, q), err in zip(agents, errors, strict=True):
        err[0] = 0
        summ(q, (N - num_id,), None, cl.SVM(a), np.uint32(num_id), cl.SVM(err))
        q.finish()
    for (i, _q), err in zip(agents, errors, strict=True):
        check(int(err[0]) == 0, f"{agent_name(env, i)} saw {int(err[0])} wrong byte neighbourhoods")
    want = np.arange(N, dtype=np.int64) % num_id
    wrong = np.flatnonzero(a.astype(np.int64) != want)
    check(wrong.size == 0, f"host sees {wrong.size} wrong bytes (first at {wrong[:1].tolist()})")


@workload("svm_set_kernel_exec_info_svm_ptrs", "kernel exec info", Svm.COARSE_GRAIN_BUFFER,
          cts=("svm_set_kernel_exec_info_svm_ptrs",))
def exec_info(env: Env, res: Result) -> None:
    """Three coarse-grain buffers reached only through pointers in a fourth, declared with
    clSetKernelExecInfo(CL_KERNEL_EXEC_INFO_SVM_PTRS); then unset with size 0."""
    q = env.main_queue()
    bufs = [cl.csvm_empty(env.ctx, N, np.int32) for _ in range(3)]
    ptrs = cl.csvm_empty(env.ctx, 3, np.uint64)
    for b in bufs:
        with cl.SVM(b).map_rw(q) as m:
            m[:] = 0
    with cl.SVM(ptrs).map_rw(q) as p:
        p[:] = [b.ctypes.data for b in bufs]
    knl = env.kernel(SOURCE, "bump_through")
    clapi.check(clapi.set_exec_info_svm_ptrs(knl, [b.ctypes.data for b in bufs]), "clSetKernelExecInfo(SVM_PTRS)")
    knl(q, (N,), None, cl.SVM(ptrs))
    q.finish()
    err = clapi.set_exec_info_svm_ptrs(knl, None)
    check(err == 0, f"unsetting SVM pointers (size 0, NULL) returned {err}")
    for name, b in zip("abc", bufs, strict=True):
        with cl.SVM(b).map_ro(q) as m:
            bad = np.flatnonzero(m != 1)
            check(bad.size == 0, f"buffer {name}: {bad.size} elements not incremented through the pointer")


@workload("svm_pointer_passing", "pointer passing", Svm.COARSE_GRAIN_BUFFER,
          cts=("svm_pointer_passing",), cross_device=True)
def pointer_passing(env: Env, res: Result) -> None:
    """A pointer to every byte inside one SVM allocation passed as a kernel argument, on each device."""
    size = 256
    buf = cl.csvm_empty(env.ctx, size, np.uint8)
    out = cl.csvm_empty(env.ctx, size, np.int32)
    q0 = env.main_queue()
    with cl.SVM(buf).map_rw(q0) as m:
        m[:] = np.arange(size, dtype=np.uint8)
    knl = env.kernel(SOURCE, "check_byte")
    for i, q in env.participants():
        with cl.SVM(out).map_rw(q) as o:
            o[:] = 0
        for k in range(size):
            knl(q, (1,), None, cl.SVM(buf[k:]), cl.SVM(out), np.uint8(k), np.int32(k))
        q.finish()
        with cl.SVM(out).map_ro(q) as o:
            bad = np.flatnonzero(o != 1)
            check(bad.size == 0, f"{agent_name(env, i)}: pointer to byte {bad[:1].tolist()} read a wrong value "
                  f"({bad.size} of {size})")


# ---- linked lists across agents: the CTS's shared-address-space tests -------------------------


class Lists:
    """Nodes for NUM_LISTS lists of LIST_LEN in one or two pools, in the memory `mode` names:
    svm (coarse SVM pointers), buffer (coarse SVM wrapped in cl_mem, the old API), sub
    (cl_mem sub-buffers of two such buffers), fine (fine-grain buffer), system (malloc'd)."""

    def __init__(self, env: Env, mode: str, two_pools: bool) -> None:
        self.env, self.mode = env, mode
        count = NUM_LISTS * LIST_LEN

        def alloc(n: int, t: Any) -> np.ndarray:
            if mode == "fine":
                return cl.fsvm_empty(env.ctx, n, t)
            if mode == "system":
                return np.zeros(n, t)
            return cl.csvm_empty(env.ctx, n, t)

        self.pools = [alloc(count, NODE)]
        self.pools.append(alloc(count, NODE) if two_pools else self.pools[0])
        self.distinct = self.pools if two_pools else self.pools[:1]
        self.mems: list[cl.Buffer] = []
        if mode in ("buffer", "sub"):
            rw = cl.mem_flags.READ_WRITE | cl.mem_flags.USE_HOST_PTR
            self.mems = [cl.Buffer(env.ctx, rw, hostbuf=p) for p in self.distinct]
        # [allocator, num_correct]: in the pools' kind of memory when the host may touch it
        # directly, else in plain device buffers read back with clEnqueueReadBuffer.
        self.direct = mode in ("fine", "system")
        self.counter_args: tuple[Any, Any]
        if self.direct:
            self.counters = alloc(2, np.int32)
            self.counter_args = (cl.SVM(self.counters[0:1]), cl.SVM(self.counters[1:2]))
        else:
            self.counter_bufs = [cl.Buffer(env.ctx, cl.mem_flags.READ_WRITE, 4) for _ in range(2)]
            self.counter_args = (self.counter_bufs[0], self.counter_bufs[1])

    def args(self) -> list[Any]:
        if self.mode == "buffer":
            m = self.mems * 2 if len(self.mems) == 1 else self.mems
            return [m[0], m[1], m[0], m[1]]
        if self.mode == "sub":
            half = self.pools[0].nbytes // 2
            # pool half 1, pool2 half 1, pool half 2, pool2 half 2 (as the CTS passes them)
            return [m.get_sub_region(o, half) for o in (0, half) for m in self.mems]
        svms = [cl.SVM(p) for p in self.pools]
        return [svms[0], svms[1], svms[0], svms[1]]

    @contextmanager
    def host(self, q: cl.CommandQueue) -> Iterator[list[np.ndarray]]:
        """The pools as the host may touch them: mapped for coarse grain, as they are otherwise."""
        if self.direct:
            yield self.pools
            return
        with ExitStack() as stack:
            views = []
            for k, p in enumerate(self.distinct):
                if self.mode == "svm":
                    view = stack.enter_context(cl.SVM(p).map_rw(q))
                else:
                    view, _ev = cl.enqueue_map_buffer(q, self.mems[k], RW_MAP,
                                                      0, p.shape, p.dtype)
                    stack.callback(view.base.release, q)
                check(view.ctypes.data == p.ctypes.data,
                      f"mapped pointer {view.ctypes.data:#x} is not the SVM pointer {p.ctypes.data:#x}")
                views.append(view)
            yield views if len(views) == 2 else [views[0], views[0]]
        q.finish()

    def set_counters(self, q: cl.CommandQueue, alloc: int, correct: int) -> None:
        if self.direct:
            self.counters[:] = [alloc, correct]
        else:
            for buf, v in zip(self.counter_bufs, (alloc, correct), strict=True):
                cl.enqueue_copy(q, buf, np.array([v], np.int32))

    def correct(self, q: cl.CommandQueue) -> int:
        if self.direct:
            return int(self.counters[1])
        out = np.zeros(1, np.int32)
        cl.enqueue_copy(q, out, self.counter_bufs[1])
        return int(out[0])

    def device_create(self, q: cl.CommandQueue) -> None:
        self.set_counters(q, NUM_LISTS, 0)
        knl = self.env.kernel(SOURCE, "create_lists")
        knl(q, (NUM_LISTS,), None, *self.args(), self.counter_args[0], np.int32(LIST_LEN))
        q.finish()

    def device_verify(self, q: cl.CommandQueue) -> int:
        self.set_counters(q, 0, 0)
        knl = self.env.kernel(SOURCE, "verify_lists")
        knl(q, (NUM_LISTS,), None, *self.args(), self.counter_args[1], np.int32(LIST_LEN))
        q.finish()
        return self.correct(q)


def host_create(pools: list[np.ndarray]) -> None:
    nxt = NUM_LISTS
    for i in range(NUM_LISTS):
        prev = pools[0][i:i + 1]
        prev["gid"], prev["pos"], prev["next"] = i, 0, 0
        for j in range(1, LIST_LEN):
            node = (pools[0] if i & 1 else pools[1])[nxt:nxt + 1]
            nxt += 1
            node["gid"], node["pos"], node["next"] = i, j, 0
            prev["next"] = node.ctypes.data
            prev = node


def host_verify(pools: list[np.ndarray]) -> int:
    spans = [(p.ctypes.data, p.ctypes.data + p.nbytes, p) for p in pools]
    correct = 0
    for i in range(NUM_LISTS):
        addr = pools[0].ctypes.data + i * NODE.itemsize
        for j in range(LIST_LEN):
            where = next(((lo, p) for lo, hi, p in spans if lo <= addr < hi), None)
            if where is None:
                break
            node = where[1][(addr - where[0]) // NODE.itemsize]
            if int(node["gid"]) != i or int(node["pos"]) != j:
                break
            correct += 1
            addr = int(node["next"])
    return correct


def lists_matrix(env: Env, res: Result, mode: str, two_pools: bool) -> Lists:
    """Create on every agent, verify on every agent (the devices of the context and the host)."""
    lists = Lists(env, mode, two_pools)
    q0 = env.main_queue()
    agents = [*(i for i, _q in env.participants()), HOST]
    queues = dict(env.participants())
    want = NUM_LISTS * LIST_LEN
    done = []
    for ci in agents:
        for vi in agents:
            with lists.host(q0) as pools:
                for p in pools:
                    p.view(np.uint8)[:] = 0  # stale lists from the previous round must not pass
            if ci == HOST:
                with lists.host(q0) as pools:
                    host_create(pools)
            else:
                lists.device_create(queues[ci])
            if vi == HOST:
                with lists.host(q0) as pools:
                    got = host_verify(pools)
            else:
                got = lists.device_verify(queues[vi])
            if got != want:
                raise Failed(f"lists created on {agent_name(env, ci)}, verified on {agent_name(env, vi)}: "
                             f"{got} of {want} nodes correct")
            done.append(f"{'host' if ci == HOST else ci}->{'host' if vi == HOST else vi}")
    res.extra["create_verify"] = done
    return lists


@workload("svm_shared_address_space_coarse_grain_old_api", "shared address space", Svm.COARSE_GRAIN_BUFFER,
          cts=("svm_shared_address_space_coarse_grain_old_api",), cross_device=True)
def coarse_old_api(env: Env, res: Result) -> None:
    """Linked lists in coarse-grain SVM wrapped in a cl_mem (CL_MEM_USE_HOST_PTR, clEnqueueMapBuffer),
    created and verified on every device and the host."""
    lists_matrix(env, res, "buffer", two_pools=False)


@workload("svm_shared_address_space_coarse_grain_new_api", "shared address space", Svm.COARSE_GRAIN_BUFFER,
          cts=("svm_shared_address_space_coarse_grain_new_api",), cross_device=True)
def coarse_new_api(env: Env, res: Result) -> None:
    """Linked lists in coarse-grain SVM passed as SVM pointers (clEnqueueSVMMap/Unmap on the host),
    created and verified on every device and the host."""
    lists_matrix(env, res, "svm", two_pools=False)


@workload("svm_cross_buffer_pointers_coarse_grain", "cross-buffer pointers", Svm.COARSE_GRAIN_BUFFER,
          cts=("svm_cross_buffer_pointers_coarse_grain",), cross_device=True)
def cross_buffer(env: Env, res: Result) -> None:
    """Linked lists whose nodes alternate between two coarse-grain SVM buffers (pointers from one
    buffer into the other), created and verified on every device and the host."""
    lists_matrix(env, res, "svm", two_pools=True)


@workload("svm_shared_sub_buffers", "sub-buffers", Svm.COARSE_GRAIN_BUFFER,
          cts=("svm_shared_sub_buffers",), cross_device=True)
def sub_buffers(env: Env, res: Result) -> None:
    """Linked lists across four cl_mem sub-buffers of two SVM-backed buffers: pointers made in one
    sub-buffer's kernel argument lead into the others."""
    lists_matrix(env, res, "sub", two_pools=True)


@workload("svm_shared_address_space_fine_grain_buffers", "shared address space", Svm.FINE_GRAIN_BUFFER,
          cts=("svm_shared_address_space_fine_grain_buffers",), cross_device=True)
def fine_lists(env: Env, res: Result) -> None:
    """Linked lists in a fine-grain SVM buffer (no map/unmap), created and verified on every device
    and the host."""
    pool = lists_matrix(env, res, "fine", two_pools=False).pools[0]
    res.pages, res.pages_total = page_records(pool.ctypes.data, pool.nbytes, content=pool.tobytes())


@workload("svm_shared_address_space_fine_grain", "shared address space", Svm.FINE_GRAIN_SYSTEM,
          cts=("svm_shared_address_space_fine_grain",), cross_device=True)
def system_svm(env: Env, res: Result) -> None:
    """Fine-grain system SVM: linked lists in plain malloc'd memory on every device and the host,
    then a kernel over ordinary numpy memory (bandwidth: system)."""
    lists_matrix(env, res, "system", two_pools=False)
    q = env.main_queue()
    a = np.ones(BW_N, dtype=np.int32)  # ordinary numpy memory, never allocated by OpenCL
    knl = env.kernel(SOURCE, "scale")

    def launch() -> None:
        knl(q, (BW_N,), None, cl.SVM(a), np.int32(1))
        q.finish()

    res.bandwidth["system"] = svm_bw(2 * a.nbytes, timed_best(launch))
    a[:] = np.arange(1, BW_N + 1, dtype=np.int32)
    knl(q, (BW_N,), None, cl.SVM(a), np.int32(4))
    q.finish()
    check(bool((a == 4 * np.arange(1, BW_N + 1)).all()), "device writes to system memory not visible")
    res.pages, res.pages_total = page_records(a.ctypes.data, a.nbytes, content=a.tobytes())
