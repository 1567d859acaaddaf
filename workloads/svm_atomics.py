"""Fine-grain SVM with atomics (CL_MEM_SVM_ATOMICS): the host and the device(s) update the
same memory at once, as OpenCL-CTS svm_fine_grain_memory_consistency and
svm_fine_grain_sync_buffers do. The host's side uses C11 atomics (libatomic).

memory_scope_all_svm_devices needs CL_DEVICE_ATOMIC_SCOPE_ALL_DEVICES; a compiler that
does not define __opencl_c_atomic_scope_all_devices although the device reports the
scope (PoCL 3.1) gets the macro defined by hand, and every result built that way lists it
under `workarounds`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyopencl as cl

from workloads.capabilities import SCOPES, Atomic, Svm
from workloads.catalog import Env, Failed, Result, Skip, check, workload
from workloads.clapi import HostAtomics
from workloads.kernels import ALL_DEVICES_KERNELS, SCOPE_WORKAROUND, SOURCE
from workloads.svm import agent_name

FINE_ATOMIC: Any = cl.svm_mem_flags.READ_WRITE | cl.svm_mem_flags.SVM_FINE_GRAIN_BUFFER | cl.svm_mem_flags.SVM_ATOMICS
FINE_RO: Any = cl.svm_mem_flags.READ_ONLY | cl.svm_mem_flags.SVM_FINE_GRAIN_BUFFER
BIN_NODE = np.dtype([("value", "<u4"), ("pad", "<u4"), ("next", "<u8")])
DEADLINE_S = 60.0


def kernel_names(prg: cl.Program) -> set[str]:
    return set(str(prg.get_info(cl.program_info.KERNEL_NAMES)).split(";"))


def require_scope(env: Env, res: Result, bit: Atomic) -> None:
    """Keep the devices offering the scope; skip, naming it, when none does."""
    scope, cap = SCOPES[bit]
    keep = [i for i in env.active if env.infos[i].has_atomic(bit)]
    if not keep:
        names = ", ".join(env.infos[i].name for i in env.active)
        raise Skip(f"device {names!r} lacks {cap} ({scope})")
    env.active = keep
    res.devices = [env.infos[i].label for i in keep]


def atomics_program(env: Env, res: Result) -> cl.Program:
    """The program with the all-SVM-devices kernels: as built, or with the feature macro
    defined when the compiler left it out (recorded in the result)."""
    require_scope(env, res, Atomic.SCOPE_ALL_DEVICES)
    prg = env.program(SOURCE)
    if set(ALL_DEVICES_KERNELS) <= kernel_names(prg):
        return prg
    try:
        prg = env.program(SOURCE, SCOPE_WORKAROUND)
    except cl.RuntimeError as exc:
        raise Failed(f"the device reports CL_DEVICE_ATOMIC_SCOPE_ALL_DEVICES, but its compiler rejects "
                     f"memory_scope_all_svm_devices even with {SCOPE_WORKAROUND}: {str(exc)[:300]}") from None
    info = env.infos[env.active[0]]
    res.workarounds.append({
        "what": f"built with {SCOPE_WORKAROUND}",
        "why": f"{info.platform_name} {info.driver_version}: the device reports CL_DEVICE_ATOMIC_SCOPE_ALL_DEVICES "
               "but its OpenCL C compiler does not define __opencl_c_atomic_scope_all_devices and rejects "
               "memory_scope_all_svm_devices: a compiler gap, not a device limit",
    })
    return prg


def host_atomics() -> HostAtomics:
    try:
        return HostAtomics()
    except (OSError, AttributeError) as exc:
        raise Skip(f"host-side C11 atomics need libatomic.so.1 (Debian: libatomic1): {exc}") from None


def _hash_table(env: Env, prg: cl.Program, atomics: HostAtomics, bins: int, n: int) -> str:
    agents = env.participants()
    inputs = cl.svm_empty(env.ctx, FINE_RO, n, np.uint32)
    inputs[:] = np.arange(n, dtype=np.uint32)
    nodes = cl.svm_empty(env.ctx, FINE_ATOMIC, n * (len(agents) + 1) + bins, BIN_NODE)
    nodes.view(np.uint8)[:] = 0
    count = cl.svm_empty(env.ctx, FINE_ATOMIC, 1, np.uint32)
    count[0] = bins  # the first `bins` nodes are the bins' heads
    base, size = nodes.ctypes.data, BIN_NODE.itemsize
    knl = cl.Kernel(prg, "build_hash_table")
    events = [knl(q, (n,), None, cl.SVM(inputs), cl.SVM(nodes), cl.SVM(count), np.uint32(bins))
              for _i, q in agents]
    for _i, q in agents:
        q.flush()
    deadline = time.monotonic() + 5
    while atomics.load_4(count.ctypes.data, atomics.SEQ_CST) == bins and time.monotonic() < deadline:
        pass  # start inserting once a device has started: the host races the devices
    for v in range(n):  # the host inserts every item too, at the head of its bin
        k = atomics.add(count.ctypes.data, 1)
        nodes["value"][k] = v
        head_addr = base + (v % bins) * size + 8
        head = atomics.load_8(head_addr, atomics.SEQ_CST)
        while True:
            atomics.store_8(base + k * size + 8, head, atomics.SEQ_CST)
            ok, head = atomics.compare_exchange(head_addr, head, base + k * size)
            if ok:
                break
    for ev in events:
        ev.wait()
    seen = np.zeros(n, np.int64)
    misplaced = 0
    for b in range(bins):
        addr = int(nodes["next"][b])
        steps = 0
        while addr and steps <= len(nodes):
            k = (addr - base) // size
            value = int(nodes["value"][k])
            misplaced += value % bins != b
            if value < n:
                seen[value] += 1
            addr = int(nodes["next"][k])
            steps += 1
    want = len(agents) + 1
    check(misplaced == 0, f"{bins} bins: {misplaced} items in the wrong bin")
    lost = np.flatnonzero(seen != want)
    check(lost.size == 0, f"{bins} bins: {lost.size} items not inserted exactly {want} times "
          f"(by {len(agents)} device(s) and the host); first {lost[:3].tolist()}")
    return f"{bins} bins: {n * want} items"


def _counters(env: Env, prg: cl.Program, atomics: HostAtomics | None, kernel: str, per_device: int,
              host_adds: int) -> None:
    buckets = 4
    agents = env.participants()
    c = cl.svm_empty(env.ctx, FINE_ATOMIC, buckets, np.int32)
    c[:] = 0
    knl = cl.Kernel(prg, kernel)
    events = [knl(q, (per_device,), None, cl.SVM(c), np.int32(buckets)) for _i, q in agents]
    for _i, q in agents:
        q.flush()
    if atomics is not None:
        for j in range(host_adds):
            atomics.add(c.ctypes.data + 4 * (j % buckets), 1)
    for ev in events:
        ev.wait()
    want = (len(agents) * per_device + (host_adds if atomics else 0)) // buckets
    bad = [x for x in c.tolist() if x != want]
    who = f"{len(agents)} device(s)" + (" and the host" if atomics else "")
    check(not bad, f"{kernel}: counters {c.tolist()} after {who} incremented them, want {want} each")


@workload("svm_fine_grain_memory_consistency", "fine-grain memory consistency",
          Svm.FINE_GRAIN_BUFFER, Svm.ATOMICS, cts=("svm_fine_grain_memory_consistency",), cross_device=True)
def consistency(env: Env, res: Result) -> None:
    """The host and every device insert into one hash table (atomic CAS on list heads in
    CL_MEM_SVM_ATOMICS memory, 1, 2 and 29 bins) and increment the same counters at once,
    with memory_scope_all_svm_devices; device-scope counters on each device alone."""
    atomics = host_atomics()
    device_scope = all(env.infos[i].has_atomic(Atomic.SCOPE_DEVICE) for i in env.active)
    prg = atomics_program(env, res)
    names = kernel_names(prg)
    if "build_hash_table" not in names:
        raise Skip("the compiler built no 64-bit atomics (cl_khr_int64_base_atomics, "
                   "cl_khr_int64_extended_atomics)")
    done = [_hash_table(env, prg, atomics, bins, 1024) for bins in (1, 2, 29)]
    _counters(env, prg, atomics, "count_all", per_device=4096, host_adds=1024)
    scopes = ["memory_scope_all_svm_devices (host + devices)"]
    if device_scope and "count_device" in names:
        for i, q in env.participants():
            sub = Env(env.platform, env.devices[i], env.infos[i], env.ctx, q, devices=[env.devices[i]],
                      infos=[env.infos[i]], queues=[q])
            try:
                _counters(sub, prg, None, "count_device", per_device=4096, host_adds=0)
            except Failed as exc:
                raise Failed(f"{agent_name(env, i)}: {exc}") from None
        scopes.append("memory_scope_device (each device alone)")
    res.extra["hash_tables"] = done
    res.extra["scopes"] = scopes


@workload("svm_fine_grain_sync_buffers", "fine-grain memory consistency",
          Svm.FINE_GRAIN_BUFFER, Svm.ATOMICS, cts=("svm_fine_grain_sync_buffers",))
def sync_buffers(env: Env, res: Result) -> None:
    """While a kernel searches an image, the host reads each target location the moment the
    device publishes it (atomic exchange, all-SVM-devices scope); then message passing: the
    device's data is all visible once the host acquires the flag it released."""
    atomics = host_atomics()
    prg = atomics_program(env, res)
    q = env.main_queue()
    n, target = 1 << 16, 777
    image = cl.svm_empty(env.ctx, FINE_RO, n, np.uint32)
    image[:] = 0
    where = [0, 3, n - 1]
    image[where] = target
    found = cl.svm_empty(env.ctx, FINE_ATOMIC, 1, np.uint32)
    found[0] = 0
    slots = cl.svm_empty(env.ctx, FINE_ATOMIC, 1024, np.int32)
    slots[:] = -1
    ev = cl.Kernel(prg, "find_targets")(q, (n,), None, cl.SVM(image), np.uint32(target), cl.SVM(found),
                                        cl.SVM(slots))
    q.flush()
    seen: list[int] = []
    deadline = time.monotonic() + DEADLINE_S
    while True:
        done = ev.command_execution_status == cl.command_execution_status.COMPLETE
        value = atomics.load_4(slots.ctypes.data + 4 * len(seen), atomics.SEQ_CST)
        if value != 0xFFFFFFFF:
            seen.append(int(np.int32(np.uint32(value))))
            continue
        if done:
            break
        check(time.monotonic() < deadline, f"find_targets still running after {DEADLINE_S:.0f} s")
    check(sorted(seen) == where, f"the host saw targets at {sorted(seen)}, the image has them at {where}")
    res.extra["targets_seen_while_running"] = seen

    data = cl.svm_empty(env.ctx, FINE_ATOMIC, 4096, np.int32)
    flag = cl.svm_empty(env.ctx, FINE_ATOMIC, 1, np.int32)
    data[:] = -1
    flag[0] = 0
    ev = cl.Kernel(prg, "publish")(q, (1,), None, cl.SVM(data), cl.SVM(flag), np.int32(data.size))
    q.flush()
    deadline = time.monotonic() + DEADLINE_S
    while atomics.load_4(flag.ctypes.data, atomics.SEQ_CST) == 0:
        if ev.command_execution_status == cl.command_execution_status.COMPLETE and flag[0] == 0:
            raise Failed("publish finished without releasing the flag")
        check(time.monotonic() < deadline, "the flag never became visible to the host")
    check(bool((data == np.arange(data.size) * 7).all()), "the host saw the flag before the data it publishes")
    ev.wait()
