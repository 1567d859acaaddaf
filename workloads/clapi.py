"""The few OpenCL entry points pyopencl does not wrap (or wraps with its own checks in
front), called through ctypes on the same ICD loader pyopencl uses, so the return code
judged is the driver's own; and the host's C11 atomics from libatomic."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Sequence
from functools import cache
from typing import Any

import pyopencl as cl

CL_SUCCESS = 0
CL_MEM_COPY_OVERLAP = -8
CL_INVALID_VALUE = -30
CL_INVALID_BUFFER_SIZE = -61
CL_KERNEL_EXEC_INFO_SVM_PTRS = 0x11B6
CL_EVENT_COMMAND_TYPE = 0x11D1
CL_EVENT_COMMAND_EXECUTION_STATUS = 0x11D3
CL_COMPLETE = 0
CL_COMMAND_SVM_FREE = 0x1209
CL_COMMAND_SVM_MEMCPY = 0x120A
CL_COMMAND_SVM_MEMFILL = 0x120B
CL_COMMAND_SVM_MAP = 0x120C
CL_COMMAND_SVM_UNMAP = 0x120D
CL_COMMAND_SVM_MIGRATE_MEM = 0x120E
CL_PLATFORM_SVM_TYPE_CAPABILITIES_KHR = 0x0909
CL_DEVICE_SVM_TYPE_CAPABILITIES_KHR = 0x1077

# cl_mem_flags / cl_svm_mem_flags
MEM_READ_WRITE, MEM_WRITE_ONLY, MEM_READ_ONLY, MEM_USE_HOST_PTR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
MEM_SVM_FINE_GRAIN_BUFFER, MEM_SVM_ATOMICS = 1 << 10, 1 << 11
MIGRATE_HOST, MIGRATE_CONTENT_UNDEFINED = 1 << 0, 1 << 1

_p, _u, _sz, _i = ctypes.c_void_p, ctypes.c_uint, ctypes.c_size_t, ctypes.c_int


@cache
def lib() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("OpenCL") or "libOpenCL.so.1")


def _fn(name: str, restype: Any, *argtypes: Any) -> Any:
    f = getattr(lib(), name)
    f.restype, f.argtypes = restype, list(argtypes)
    return f


def h(obj: Any) -> ctypes.c_void_p:
    """The cl_* handle behind a pyopencl object."""
    return ctypes.c_void_p(obj.int_ptr)


def check(err: int, what: str) -> None:
    if err != CL_SUCCESS:
        raise cl.RuntimeError(f"{what} failed: {err}")


def set_exec_info_svm_ptrs(kernel: cl.Kernel, ptrs: Sequence[int | None] | None) -> int:
    """clSetKernelExecInfo(CL_KERNEL_EXEC_INFO_SVM_PTRS); None: size 0 with NULL (unset)."""
    f = _fn("clSetKernelExecInfo", _i, _p, _u, _sz, _p)
    if ptrs is None:
        return int(f(h(kernel), CL_KERNEL_EXEC_INFO_SVM_PTRS, 0, None))
    arr = (ctypes.c_void_p * len(ptrs))(*ptrs)
    return int(f(h(kernel), CL_KERNEL_EXEC_INFO_SVM_PTRS, ctypes.sizeof(arr), arr))


def create_buffer(ctx: cl.Context, flags: int, size: int, host_ptr: int | None) -> tuple[int, int]:
    """clCreateBuffer: (handle or 0, error code)."""
    err = _i(0)
    f = _fn("clCreateBuffer", _p, _p, ctypes.c_uint64, _sz, _p, ctypes.POINTER(_i))
    mem = f(h(ctx), flags, size, host_ptr, ctypes.byref(err))
    return int(mem or 0), err.value


def release_mem(mem: int) -> None:
    if mem:
        _fn("clReleaseMemObject", _i, _p)(mem)


def svm_alloc(ctx: cl.Context, flags: int, size: int, alignment: int = 0) -> int:
    return int(_fn("clSVMAlloc", _p, _p, ctypes.c_uint64, _sz, _u)(h(ctx), flags, size, alignment) or 0)


def svm_free(ctx: cl.Context, ptr: int | None) -> None:
    _fn("clSVMFree", None, _p, _p)(h(ctx), ptr)


def _event_out() -> ctypes.c_void_p:
    return ctypes.c_void_p(0)


def enqueue_svm_free(queue: cl.CommandQueue, ptrs: Sequence[int | None]) -> tuple[int, int]:
    ev = _event_out()
    arr = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
    f = _fn("clEnqueueSVMFree", _i, _p, _u, _p, _p, _p, _u, _p, ctypes.POINTER(_p))
    err = f(h(queue), len(ptrs), arr if ptrs else None, None, None, 0, None, ctypes.byref(ev))
    return int(err), int(ev.value or 0)


def enqueue_svm_memfill(queue: cl.CommandQueue, ptr: int, pattern: bytes, size: int) -> tuple[int, int]:
    ev = _event_out()
    buf = ctypes.create_string_buffer(pattern, len(pattern))
    f = _fn("clEnqueueSVMMemFill", _i, _p, _p, _p, _sz, _sz, _u, _p, ctypes.POINTER(_p))
    err = f(h(queue), ptr, buf, len(pattern), size, 0, None, ctypes.byref(ev))
    return int(err), int(ev.value or 0)


def enqueue_svm_memcpy(queue: cl.CommandQueue, dst: int, src: int, size: int, blocking: bool = True) -> tuple[int, int]:
    ev = _event_out()
    f = _fn("clEnqueueSVMMemcpy", _i, _p, _u, _p, _p, _sz, _u, _p, ctypes.POINTER(_p))
    err = f(h(queue), int(blocking), dst, src, size, 0, None, ctypes.byref(ev))
    return int(err), int(ev.value or 0)


def enqueue_svm_migrate(queue: cl.CommandQueue, ptrs: Sequence[int | None], sizes: Sequence[int] | None,
                        flags: int) -> tuple[int, int]:
    ev = _event_out()
    parr = (ctypes.c_void_p * len(ptrs))(*ptrs)
    sarr = (ctypes.c_size_t * len(sizes))(*sizes) if sizes is not None else None
    f = _fn("clEnqueueSVMMigrateMem", _i, _p, _u, _p, _p, ctypes.c_uint64, _u, _p, ctypes.POINTER(_p))
    err = f(h(queue), len(ptrs), parr, sarr, flags, 0, None, ctypes.byref(ev))
    return int(err), int(ev.value or 0)


def event_info_uint(event: int, param: int) -> int:
    out = ctypes.c_int(0)
    check(_fn("clGetEventInfo", _i, _p, _u, _sz, _p, _p)(event, param, 4, ctypes.byref(out), None),
          "clGetEventInfo")
    return out.value


def wait(event: int) -> None:
    ev = ctypes.c_void_p(event)
    check(_fn("clWaitForEvents", _i, _u, ctypes.POINTER(_p))(1, ctypes.byref(ev)), "clWaitForEvents")


def release_event(event: int) -> None:
    if event:
        _fn("clReleaseEvent", _i, _p)(event)


def wait_and_release(event: int) -> None:
    if event:
        wait(event)
        release_event(event)


def _info_bytes(fn: str, handle: ctypes.c_void_p, param: int) -> bytes:
    f = _fn(fn, _i, _p, _u, _sz, _p, ctypes.POINTER(_sz))
    size = _sz(0)
    check(f(handle, param, 0, None, ctypes.byref(size)), f"{fn}({param:#x}) size")
    buf = ctypes.create_string_buffer(size.value)
    check(f(handle, param, size.value, buf, None), f"{fn}({param:#x})")
    return buf.raw


def device_info_u64s(dev: cl.Device, param: int) -> list[int]:
    raw = _info_bytes("clGetDeviceInfo", h(dev), param)
    return list(memoryview(raw).cast("Q")) if len(raw) % 8 == 0 else []


def platform_info_u64s(platform: cl.Platform, param: int) -> list[int]:
    raw = _info_bytes("clGetPlatformInfo", h(platform), param)
    return list(memoryview(raw).cast("Q")) if len(raw) % 8 == 0 else []


class HostAtomics:
    """C11 atomics on SVM memory from the host, through libatomic's out-of-line calls
    (what the CTS does with compiler intrinsics). seq_cst throughout."""

    SEQ_CST = 5

    def __init__(self) -> None:
        name = ctypes.util.find_library("atomic") or "libatomic.so.1"
        self._lib = ctypes.CDLL(name)  # OSError when absent: the caller skips, naming it
        self.fetch_add_4 = self._bind("__atomic_fetch_add_4", ctypes.c_uint32, _p, ctypes.c_uint32, _i)
        self.load_4 = self._bind("__atomic_load_4", ctypes.c_uint32, _p, _i)
        self.load_8 = self._bind("__atomic_load_8", ctypes.c_uint64, _p, _i)
        self.store_8 = self._bind("__atomic_store_8", None, _p, ctypes.c_uint64, _i)
        self.cas_8 = self._bind("__atomic_compare_exchange_8", ctypes.c_bool, _p, _p, ctypes.c_uint64, _i, _i)

    def _bind(self, name: str, restype: Any, *argtypes: Any) -> Any:
        f = getattr(self._lib, name)
        f.restype, f.argtypes = restype, list(argtypes)
        return f

    def add(self, addr: int, value: int) -> int:
        return int(self.fetch_add_4(addr, value, self.SEQ_CST))

    def compare_exchange(self, addr: int, expected: int, desired: int) -> tuple[bool, int]:
        exp = ctypes.c_uint64(expected)
        ok = bool(self.cas_8(addr, ctypes.byref(exp), desired, self.SEQ_CST, self.SEQ_CST))
        return ok, exp.value
