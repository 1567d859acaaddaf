"""SVA workloads: the svmval-sva device reads and writes process memory at its virtual
addresses, through PASID-tagged ATS translations and page requests (docs/TESTDEV.md).

Each one opens /dev/svmval-sva0 (which binds the process's mm: one PASID), verifies
the data the device moved, and checks the device's page-request count against what
the memory's state predicts (/proc/self/pagemap: one request per page not present).
Each records the ops (device_ns, wall_ns, page requests, bandwidth), the device
counters' deltas, the PASID and the pages the device touched (page_records, so the
host can check the translations). Without the device each skips naming why
(svadev.absent_reason()).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyopencl as cl

from workloads.capabilities import Svm
from workloads.catalog import Env, Failed, Result, Skip, check, workload
from workloads.dmar_log import await_kernel_reports, between_faults
from workloads.pages import PAGE, page_records
from workloads.svadev import UNBOUND_PASID, DevError, Op, OpFlag, OpResult, Status, SvaDevice, absent_reason

NEED = "svmval-sva device"
HUGE = 2 << 20
STORM_PAGES = 10_240  # >= 10,000 first-touch pages in one op (40 MiB)

# Linux x86-64 mmap(2) constants (Python's mmap module gives no address control).
PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x02, 0x10, 0x20
MAP_GROWSDOWN, MAP_STACK, MAP_HUGETLB, MAP_FIXED_NOREPLACE = 0x100, 0x20000, 0x40000, 0x100000
MADV_HUGEPAGE, MADV_NOHUGEPAGE = 14, 15
MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


class Region:
    """An anonymous mapping made with mmap(2) directly; never touched unless written."""

    def __init__(self, size: int, *, prot: int = PROT_READ | PROT_WRITE, flags: int = 0,
                 addr: int = 0, thp: bool = False):
        self.size = size
        p = _libc.mmap(addr or None, size, prot, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0)
        if p in (None, MAP_FAILED):
            raise _oserror(f"mmap({size:#x}, flags {flags:#x})")
        self.addr: int = p
        # One page request per 4 KiB page is the prediction: no transparent huge pages
        # unless asked for (Debian's THP default would fault 2 MiB at once in aligned spans).
        self.madvise(MADV_HUGEPAGE if thp else MADV_NOHUGEPAGE)

    def madvise(self, advice: int) -> None:
        if _libc.madvise(self.addr, self.size, advice) != 0 and advice != MADV_NOHUGEPAGE:
            raise _oserror(f"madvise({advice})")

    def protect(self, prot: int) -> None:
        if _libc.mprotect(self.addr, self.size, prot) != 0:
            raise _oserror("mprotect")

    def unmap(self) -> None:
        if self.size and _libc.munmap(self.addr, self.size) != 0:
            raise _oserror("munmap")
        self.size = 0

    def array(self) -> np.ndarray:
        return np.ctypeslib.as_array((ctypes.c_uint8 * self.size).from_address(self.addr))

    def read(self) -> bytes:
        return ctypes.string_at(self.addr, self.size)

    def write(self, data: bytes, offset: int = 0) -> None:
        ctypes.memmove(self.addr + offset, data, len(data))


def present_pages(addr: int, size: int) -> int:
    """Pages of [addr, addr+size) that are present now (pagemap bit 63)."""
    first, last = addr // PAGE, (addr + size - 1) // PAGE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        raw = f.read((last - first + 1) * 8)
    entries = np.frombuffer(raw, dtype="<u8")
    return int(np.count_nonzero(entries >> np.uint64(63)))


def pages_of(addr: int, size: int) -> int:
    return (addr + size - 1) // PAGE - addr // PAGE + 1


def pattern(seed: int, n: int) -> bytes:
    """WRITE_PATTERN's bytes: byte i = (seed + i*131) & 0xff."""
    return ((np.uint64(seed & 0xFF) + np.arange(n, dtype=np.uint64) * np.uint64(131)) & np.uint64(0xFF)).astype(
        np.uint8).tobytes()


def fill(value: int, n: int) -> bytes:
    """FILL's bytes: the 64-bit value repeated, little-endian."""
    return (struct.pack("<Q", value) * (n // 8 + 1))[:n]


def _differ(got: bytes, want: bytes) -> str:
    a, b = np.frombuffer(got, np.uint8), np.frombuffer(want, np.uint8)
    bad = np.flatnonzero(a != b)
    return f"{bad.size} of {a.size} bytes differ (first at offset {int(bad[0])})" if bad.size else "equal"


class Session:
    """The device as one workload uses it: every op recorded in the result."""

    def __init__(self, res: Result, dev: SvaDevice):
        self.res, self.dev = res, dev
        info = dev.info()
        check(info.bound, f"open() did not bind: info flags {info.flags!r}")
        self.pasid = info.pasid
        self.start = dev.counters()
        res.extra.update(pasid=info.pasid, sid=info.source_id, device_flags=info.flags.name or "",
                         seed=info.seed, ops=[])
        self.totals = {"device_ns": 0, "wall_ns": 0, "op_page_requests": 0}

    def op(self, label: str, op: Op, src: int, dst: int = 0, *, length: int, pattern: int = 0,
           flags: OpFlag = OpFlag.NONE) -> OpResult:
        try:
            r = self.dev.op(op, src, dst, length=length, pattern=pattern, flags=flags)
        except OSError as exc:
            raise Failed(f"{label}: {op.name} ioctl failed: {exc}") from exc
        self.res.extra["ops"].append({"label": label, **r.record()})
        if r.ok:
            self.res.bandwidth[label] = r.bandwidth()
            self.res.bandwidth[f"{label}@device"] = r.bandwidth(device=True)
        self.totals["device_ns"] += r.device_ns
        self.totals["wall_ns"] += r.wall_ns
        self.totals["op_page_requests"] += r.page_requests
        return r

    def expect_ok(self, label: str, r: OpResult) -> OpResult:
        check(r.ok, f"{label}: device ended {r.op.name} with {r.status!r} {r.error.name} at {r.error_addr:#x}")
        return r

    def delta(self) -> dict[str, int]:
        now = self.dev.counters()
        d = {k: now[k] - self.start[k] for k in now}
        d["atc_entries"] = now["atc_entries"]  # a gauge, not a count
        return d

    def pages(self, regions: list[tuple[int, int]], *, content: bool = True) -> None:
        """Record the pages the device touched (a sample per region, with contents)."""
        for addr, size in regions:
            recs, total = page_records(addr, size, content=ctypes.string_at(addr, size) if content else None)
            self.res.pages.extend(recs)
            self.res.pages_total += total

    def close(self) -> None:
        delta = self.delta()
        self.res.extra["counters_delta"] = delta
        self.res.extra["page_requests"] = delta["page_requests"]
        self.res.extra.update(self.totals)
        self.res.timings["device_s"] = round(self.totals["device_ns"] / 1e9, 4)
        self.res.timings["ops_wall_s"] = round(self.totals["wall_ns"] / 1e9, 4)
        self.dev.close()


@contextmanager
def session(res: Result) -> Iterator[Session]:
    res.needs.append(NEED)
    reason = absent_reason()
    if reason:
        raise Skip(reason)
    s = Session(res, SvaDevice())
    try:
        yield s
    finally:
        s.close()


def _first_touch(s: Session, label: str, op: Op, addr: int, size: int, seed: int = 0) -> OpResult:
    """An op over memory partly or wholly never touched: one page request per absent page."""
    absent = pages_of(addr, size) - present_pages(addr, size)
    before = s.dev.counters()["page_requests"]
    r = s.expect_ok(label, s.op(label, op, addr, length=size, pattern=seed))
    sent = s.dev.counters()["page_requests"] - before
    check(r.page_requests == absent,
          f"{label}: {absent} pages were not present, the op reports {r.page_requests} page requests")
    check(sent == absent, f"{label}: {absent} pages were not present, the page-request counter moved {sent}")
    check(present_pages(addr, size) == pages_of(addr, size), f"{label}: pages still absent after the op")
    return r


@workload("sva_first_touch", "SVA: device first touch (page requests)")
def first_touch(env: Env | None, res: Result) -> None:
    """The device writes never-touched mmap'd and malloc'd memory: one page request per page."""
    with session(res) as s:
        pages = 256
        m = Region(pages * PAGE)
        r = _first_touch(s, "mmap_write", Op.WRITE_PATTERN, m.addr, m.size, seed=0x11)
        check(m.read() == pattern(0x11, m.size), f"mmap'd memory: {_differ(m.read(), pattern(0x11, m.size))}")
        res.extra["mmap_page_requests"] = r.page_requests
        # malloc above the mmap threshold: fresh pages but the chunk header's page is touched.
        size = pages * PAGE + 123
        p = _libc.malloc(size)
        check(bool(p), "malloc failed")
        try:
            _libc.madvise((p + PAGE - 1) // PAGE * PAGE, size - PAGE, MADV_NOHUGEPAGE)
            r = _first_touch(s, "malloc_write", Op.WRITE_PATTERN, p, size, seed=0x5A)
            got = ctypes.string_at(p, size)
            check(got == pattern(0x5A, size), f"malloc'd memory: {_differ(got, pattern(0x5A, size))}")
            res.extra["malloc_page_requests"] = r.page_requests
            s.pages([(m.addr, m.size), (p, size)])
        finally:
            _libc.free(p)
        # A read first touch maps the zero page; the write after it needs a request again.
        z = Region(64 * PAGE)
        r = _first_touch(s, "mmap_read", Op.READ_CRC, z.addr, z.size)
        check(r.result == zlib.crc32(bytes(z.size)), "never-touched memory did not read as zeros")
        r = s.expect_ok("zero_page_write", s.op("zero_page_write", Op.FILL, z.addr, length=z.size,
                                                pattern=0x0123456789ABCDEF))
        check(r.page_requests == 64, f"writing over the zero page took {r.page_requests} page requests, not 64")
        check(z.read() == fill(0x0123456789ABCDEF, z.size), "FILL over the zero page: wrong bytes")
        res.extra["first_touch"] = True
        m.unmap()
        z.unmap()


@workload("sva_read_crc", "SVA: device reads what the CPU wrote")
def read_crc(env: Env | None, res: Result) -> None:
    """CPU-written data read back by the device: READ_CRC equals zlib.crc32; COPY and
    COMPARE between two buffers; no page request for present pages."""
    with session(res) as s:
        rng = np.random.default_rng(1)
        for label, size, off in (("4k", PAGE, 0), ("4k+1", PAGE + 1, 0), ("unaligned", 5 * PAGE + 77, 333),
                                 ("1m", 1 << 20, 0)):
            m = Region(size + off + PAGE)
            data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            m.write(data, off)
            r = s.expect_ok(label, s.op(f"crc_{label}", Op.READ_CRC, m.addr + off, length=size))
            check(r.result == zlib.crc32(data), f"{label}: device CRC {r.result:#x} != zlib {zlib.crc32(data):#x}")
            check(r.page_requests == 0, f"{label}: {r.page_requests} page requests for present pages")
            m.unmap()
        size = 64 * PAGE
        a, b = Region(size), Region(size)
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        a.write(data)
        b.write(bytes(size))  # present: no page requests in the COPY either
        r = s.expect_ok("copy", s.op("copy", Op.COPY, a.addr, b.addr, length=size))
        check(b.read() == data, f"COPY: {_differ(b.read(), data)}")
        r = s.expect_ok("compare_equal", s.op("compare_equal", Op.COMPARE, a.addr, b.addr, length=size))
        check(r.result == 0, f"COMPARE of equal buffers gave {r.result}")
        b.write(bytes([data[40_000] ^ 0xFF]), 40_000)
        r = s.op("compare_differ", Op.COMPARE, a.addr, b.addr, length=size)
        check(r.error is DevError.COMPARE_MISMATCH and r.result == 40_001,
              f"COMPARE of buffers differing at 40000: {r.error.name}, result {r.result}")
        s.pages([(a.addr, size), (b.addr, size)])


@workload("sva_dma_api", "SVA: plain DMA API (NO_PASID)")
def dma_api(env: Env | None, res: Result) -> None:
    """NO_PASID ops: the driver bounces through dma_alloc_coherent; the device makes untagged
    DMA translated by the IOMMU's default domain, no page requests."""
    with session(res) as s:
        size = 16 * PAGE + 5
        m = Region(size + PAGE)
        data = np.random.default_rng(2).integers(0, 256, size, dtype=np.uint8).tobytes()
        m.write(data)
        r = s.expect_ok("dma_crc", s.op("dma_crc", Op.READ_CRC, m.addr, length=size, flags=OpFlag.NO_PASID))
        check(r.result == zlib.crc32(data), "NO_PASID READ_CRC differs from zlib")
        r = s.expect_ok("dma_pattern", s.op("dma_pattern", Op.WRITE_PATTERN, m.addr, length=size, pattern=7,
                                            flags=OpFlag.NO_PASID))
        check(ctypes.string_at(m.addr, size) == pattern(7, size), "NO_PASID WRITE_PATTERN not copied back")
        check(r.page_requests == 0, f"{r.page_requests} page requests without a PASID")
        try:
            s.dev.op(Op.READ_CRC, m.addr, length=PAGE, flags=OpFlag.NO_PASID | OpFlag.PRIV)
            raise Failed("the driver took PRIV with NO_PASID")
        except OSError as exc:
            check(exc.errno == 22, f"PRIV with NO_PASID: {exc}, expected EINVAL")


KERNELS = r"""
#ifdef SVMVAL_SEED_SKIP
#define SEED_SKIP(i) if ((i) == 0) return
#else
#define SEED_SKIP(i)
#endif
__kernel void stamp(__global uint *a, uint salt) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    a[i] = (uint)i * 2654435761u ^ salt;
}
__kernel void verify_pattern(__global const uchar *a, uint seed, __global uint *bad) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    bad[i] = a[i] != (uchar)((seed + i * 131u) & 0xffu);
}
"""


@workload("sva_opencl_svm", "SVA: OpenCL SVM shared with the device", Svm.FINE_GRAIN_BUFFER)
def opencl_svm(env: Env, res: Result) -> None:
    """A PoCL kernel writes SVM memory, the device CRCs it through the same virtual address,
    then writes it, and a kernel verifies the device's bytes."""
    with session(res) as s:
        n = 64 * 1024  # 256 KiB of uint
        queue = env.main_queue()
        if env.infos[env.active[0]].has(Svm.FINE_GRAIN_SYSTEM):
            region = Region(n * 4)  # system SVM: plain process memory handed to the kernel
            a = region.array().view(np.uint32)
            kind = "fine-grain system"
        else:
            a = cl.fsvm_empty(env.ctx, n, np.dtype(np.uint32))
            kind = "fine-grain buffer"
        res.extra["svm_kind"] = kind
        addr = a.ctypes.data
        env.kernel(KERNELS, "stamp")(queue, (n,), None, cl.SVM(a), np.uint32(0xA5A5))
        queue.finish()
        want = (np.arange(n, dtype=np.uint32) * np.uint32(2654435761)) ^ np.uint32(0xA5A5)
        check(bool((a == want).all()), "the OpenCL kernel's values are wrong on the host")
        r = s.expect_ok("crc_of_kernel_output", s.op("crc_of_kernel_output", Op.READ_CRC, addr, length=a.nbytes))
        check(r.result == zlib.crc32(a.tobytes()), "the device's CRC of the kernel's output differs from zlib")
        s.expect_ok("device_writes_svm", s.op("device_writes_svm", Op.WRITE_PATTERN, addr, length=a.nbytes,
                                              pattern=0x3C))
        bad = cl.fsvm_empty(env.ctx, a.nbytes, np.dtype(np.uint32))
        bad[:] = 1  # a byte the kernel never looked at counts as wrong
        env.kernel(KERNELS, "verify_pattern")(queue, (a.nbytes,), None, cl.SVM(a.view(np.uint8)),
                                              np.uint32(0x3C), cl.SVM(bad))
        queue.finish()
        check(int(bad.sum()) == 0, f"the kernel sees {int(bad.sum())} bytes the device did not write")
        check(a.tobytes() == pattern(0x3C, a.nbytes), "the host sees other bytes than the device wrote")
        s.pages([(addr, a.nbytes)])
        # The system-SVM region stays mapped: numpy views of it may outlive this function.


def _map_at(addr: int, size: int) -> Region:
    r = Region(size, addr=addr, flags=MAP_FIXED_NOREPLACE)
    if r.addr != addr:
        r.unmap()
        raise Failed(f"mmap at {addr:#x} gave {r.addr:#x}")
    return r


@workload("sva_munmap_remap", "SVA: munmap + mmap between device ops")
def munmap_remap(env: Env | None, res: Result) -> None:
    """The same virtual range unmapped and mapped again between device ops: the device must
    see the new pages (a stale ATC entry would read the freed old ones)."""
    with session(res) as s:
        size = 32 * PAGE
        m = Region(size)
        addr = m.addr
        rng = np.random.default_rng(3)
        inval = []
        for rnd in range(3):
            data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            m.write(data)
            r = s.expect_ok(f"round{rnd}_crc", s.op(f"round{rnd}_crc", Op.READ_CRC, addr, length=size))
            check(r.result == zlib.crc32(data), f"round {rnd}: the device read other data than the CPU wrote")
            before = s.dev.counters()["invalidations"]
            m.unmap()
            m = _map_at(addr, size)
            inval.append(s.dev.counters()["invalidations"] - before)
            check(inval[-1] > 0, f"round {rnd}: munmap sent the device no ATC invalidation")
        # Mapped again and left untouched: zeros, fetched through page requests.
        r = _first_touch(s, "remapped_untouched", Op.READ_CRC, addr, size)
        check(r.result == zlib.crc32(bytes(size)), "a fresh mapping at a reused address did not read as zeros")
        r = s.expect_ok("remapped_write", s.op("remapped_write", Op.WRITE_PATTERN, addr, length=size, pattern=9))
        check(m.read() == pattern(9, size), "device write into the remapped range not seen by the CPU")
        res.extra["invalidations_per_munmap"] = inval
        s.pages([(addr, size)])
        m.unmap()


def _child(fn: Callable[[], dict[str, Any]]) -> tuple[int, int]:
    """fork; the child runs fn and writes its JSON answer to a pipe, then _exits."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(rfd)
        code = 0
        try:
            out = fn()
        except BaseException as exc:  # the parent reports it
            out, code = {"error": repr(exc)}, 1
        os.write(wfd, json.dumps(out).encode())
        os._exit(code)
    os.close(wfd)
    return pid, rfd


def _collect(pid: int, rfd: int, timeout: float = 600) -> dict[str, Any]:
    chunks, deadline = [], time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([rfd], [], [], left)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(rfd)
            raise Failed(f"child {pid} gave no answer in {timeout:.0f} s")
        chunk = os.read(rfd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(rfd)
    os.waitpid(pid, 0)
    out: dict[str, Any] = json.loads(b"".join(chunks) or b'{"error": "child died without an answer"}')
    if "error" in out:
        raise Failed(f"child {pid}: {out['error']}")
    return out


@workload("sva_fork_cow", "SVA: fork and copy-on-write")
def fork_cow(env: Env | None, res: Result) -> None:
    """After fork, parent and child each write the shared COW range through their own PASID:
    each sees only its own data (a writable translation kept from before the fork would let
    the parent's device write into the child's page)."""
    with session(res) as s:
        pages = 16
        size = pages * PAGE
        m = Region(size)
        s.expect_ok("before_fork", s.op("before_fork", Op.WRITE_PATTERN, m.addr, length=size, pattern=1))
        go_r, go_w = os.pipe()

        def child() -> dict[str, Any]:
            os.read(go_r, 1)  # the parent's device write happened
            mine = m.read()
            out: dict[str, Any] = {"kept_pre_fork_data": mine == pattern(1, size)}
            try:  # the inherited file is bound to the parent's mm
                s.dev.op(Op.READ_CRC, m.addr, length=PAGE)
                out["inherited_fd"] = "accepted"
            except OSError as exc:
                out["inherited_fd"] = exc.errno
            with SvaDevice() as dev:
                out["pasid"] = dev.info().pasid
                r = dev.op(Op.READ_CRC, m.addr, length=size)
                out["crc_ok"] = r.ok and r.result == zlib.crc32(mine)
                w = dev.op(Op.WRITE_PATTERN, m.addr, length=size, pattern=3)
                out["write"] = w.record()
                out["sees_own_write"] = m.read() == pattern(3, size)
            return out

        pid, rfd = _child(child)
        before = s.dev.counters()
        r = s.expect_ok("parent_after_fork", s.op("parent_after_fork", Op.WRITE_PATTERN, m.addr, length=size,
                                                  pattern=2))
        inval = s.dev.counters()["invalidations"] - before["invalidations"]
        os.write(go_w, b"x")
        kid = _collect(pid, rfd)
        os.close(go_r)
        os.close(go_w)
        res.extra["child"] = kid
        check(kid["kept_pre_fork_data"], "the parent's device write after fork reached the child's memory")
        check(kid["inherited_fd"] == 1, f"an op on the inherited fd gave {kid['inherited_fd']}, expected EPERM")
        check(kid["pasid"] != s.pasid, f"child and parent share PASID {s.pasid}")
        check(kid["crc_ok"], "the child's device read of its COW pages differs")
        check(kid["sees_own_write"], "the child does not see its own device write")
        check(kid["write"]["page_requests"] == pages,
              f"the child's write broke COW with {kid['write']['page_requests']} page requests, not {pages}")
        check(r.page_requests == pages, f"the parent's write after fork took {r.page_requests} page requests")
        check(inval > 0, "fork's write-protection sent the device no ATC invalidation")
        check(m.read() == pattern(2, size), "the parent does not see its own device write")
        r = s.expect_ok("parent_crc", s.op("parent_crc", Op.READ_CRC, m.addr, length=size))
        check(r.result == zlib.crc32(pattern(2, size)), "the parent's device read differs")
        res.extra["fork_invalidations"] = inval
        s.pages([(m.addr, size)])
        m.unmap()


def _meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        out[key] = int(rest.split()[0])
    return out


def _thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "absent"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else text.strip()


def _anon_huge_kb(addr: int) -> int:
    """AnonHugePages of the VMA holding addr (smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0] if line else ""
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


@workload("sva_hugepage_2m", "SVA: 2 MiB pages")
def hugepage_2m(env: Env | None, res: Result) -> None:
    """The device first-touches a 2 MiB page (hugetlbfs, else THP): one page request
    faults the whole page in, the other 511 4-KiB pieces translate without one."""
    with session(res) as s:
        mem = _meminfo()
        if mem.get("HugePages_Free", 0) >= 1 and mem.get("Hugepagesize", 0) == 2048:
            m = Region(HUGE, flags=MAP_HUGETLB)
            base, kind = m.addr, "hugetlbfs"
        elif _thp_mode() in ("always", "madvise"):
            m = Region(2 * HUGE, thp=True)  # 4 MiB, to hold one aligned 2 MiB span
            base, kind = (m.addr + HUGE - 1) // HUGE * HUGE, "THP"
        else:
            raise Skip(f"no 2 MiB pages: HugePages_Free {mem.get('HugePages_Free', 0)}, "
                       f"transparent_hugepage [{_thp_mode()}]")
        res.extra["huge_kind"] = kind
        r = s.expect_ok("huge_first_touch", s.op("huge_first_touch", Op.WRITE_PATTERN, base, length=HUGE,
                                                 pattern=0x77))
        if kind == "THP" and _anon_huge_kb(base) < 2048:
            raise Skip("the THP fault fell back to 4 KiB pages (no free 2 MiB block): not a huge-page test")
        check(r.page_requests == 1, f"a {kind} 2 MiB first touch took {r.page_requests} page requests, not 1")
        got = ctypes.string_at(base, HUGE)
        check(got == pattern(0x77, HUGE), f"2 MiB page after WRITE_PATTERN: {_differ(got, pattern(0x77, HUGE))}")
        r = s.expect_ok("huge_crc", s.op("huge_crc", Op.READ_CRC, base, length=HUGE))
        check(r.result == zlib.crc32(got), "device CRC of the 2 MiB page differs")
        res.extra["anon_huge_kb"] = _anon_huge_kb(base)
        s.pages([(base, HUGE)])
        m.unmap()


@workload("sva_readonly_write", "SVA: device write to a read-only mapping")
def readonly_write(env: Env | None, res: Result) -> None:
    """A write to a read-only mapping is refused: the op ends with ERROR, no byte changes,
    and reads still work."""
    with session(res) as s:
        size = 4 * PAGE
        data = np.random.default_rng(4).integers(0, 256, size, dtype=np.uint8).tobytes()
        results = {}
        for label, read_first in (("cached_read_translation", True), ("cold", False)):
            m = Region(size)
            m.write(data)
            m.protect(PROT_READ)
            if read_first:  # the ATC then holds a read-only translation the write must not use
                r = s.expect_ok(f"{label}_read", s.op(f"{label}_read", Op.READ_CRC, m.addr, length=size))
                check(r.result == zlib.crc32(data), "READ_CRC of a read-only mapping differs")
            before = s.dev.counters()
            r = s.op(f"{label}_write", Op.WRITE_PATTERN, m.addr, length=size, pattern=0xEE)
            after = s.dev.counters()
            check(bool(r.status & Status.ERROR), f"{label}: the write to a read-only mapping ended {r.status!r}")
            check(r.error in (DevError.RESPONSE_INVALID, DevError.RESPONSE_FAILURE),
                  f"{label}: error {r.error.name}, expected a refused page request")
            check(m.addr <= r.error_addr < m.addr + size, f"{label}: error address {r.error_addr:#x} outside")
            check(m.read() == data, f"{label}: the refused write changed memory: {_differ(m.read(), data)}")
            refused = (after["prg_invalid"] - before["prg_invalid"]) + (after["prg_failure"] - before["prg_failure"])
            check(refused >= 1, f"{label}: no refused page group response counted")
            results[label] = r.error.name
            s.pages([(m.addr, size)])
            m.unmap()
        res.extra["errors"] = results


def _direct_map_address(gpa: int) -> int | None:
    """The kernel's direct-map address of a physical address, from /proc/kcore's RAM segments."""
    try:
        with open("/proc/kcore", "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF":
                return None
            phoff, = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return None
    for i in range(phnum):
        p_type, _fl, _off, vaddr, paddr, _fsz, memsz, _al = struct.unpack_from("<IIQQQQQQ", table, i * phentsize)
        if p_type == 1 and paddr != 2**64 - 1 and vaddr < 0xFFFFFFFF80000000 and paddr <= gpa < paddr + memsz:
            return int(vaddr + (gpa - paddr))
    return None


@workload("sva_kernel_address", "SVA: kernel address refused")
def kernel_address(env: Env | None, res: Result) -> None:
    """The device aims at the kernel's own alias (direct map) of one of this process's pages,
    user-mode and privileged: every access is refused and the page keeps its bytes."""
    from workloads.pages import gpa_of

    with session(res) as s:
        m = Region(PAGE)
        data = np.random.default_rng(5).integers(0, 256, PAGE, dtype=np.uint8).tobytes()
        m.write(data)
        gpa = gpa_of(m.addr)
        kva = _direct_map_address(gpa) if gpa is not None else None
        res.extra["kernel_address_source"] = "direct map of an own page (/proc/kcore)" if kva else "fixed"
        if kva is None:
            kva = 0xFFFFFFFF81000000  # kernel text (approximately): only the refusal is checked
        res.extra["kernel_address"] = kva
        outcomes = {}
        for label, op, flags in (("user_write", Op.WRITE_PATTERN, OpFlag.NONE),
                                 ("priv_write", Op.FILL, OpFlag.PRIV),
                                 ("user_read", Op.READ_CRC, OpFlag.NONE),
                                 ("priv_read", Op.READ_CRC, OpFlag.PRIV)):
            r = s.op(label, op, kva, length=PAGE, pattern=0xDEADBEEF, flags=flags)
            check(bool(r.status & Status.ERROR), f"{label} at kernel address {kva:#x} ended {r.status!r}")
            if op is Op.READ_CRC:
                check(r.result != zlib.crc32(data), f"{label}: the device read the page through the kernel alias")
            check(m.read() == data, f"{label}: the page changed through its kernel alias")
            outcomes[label] = r.error.name
        res.extra["errors"] = outcomes
        s.pages([(m.addr, PAGE)])
        m.unmap()


@workload("sva_pasid_not_present", "SVA: requests tagged with a PASID no process is bound to")
def pasid_not_present(env: Env | None, res: Result) -> None:
    """The device reads one page of this process and writes another, tagged with a PASID
    no bind holds (svadev.UNBOUND_PASID): the unit must fault each translation (PASID
    entry not present: a fault record whose reason, direction and PASID the host checks)
    and neither page changes. How the device ends the op is its own (recorded)."""
    with session(res) as s:
        if s.pasid == UNBOUND_PASID:
            raise Skip(f"this process was bound with PASID {UNBOUND_PASID}, the one the op must not hold")
        m = Region(2 * PAGE)
        data = np.random.default_rng(6).integers(0, 256, 2 * PAGE, dtype=np.uint8).tobytes()
        m.write(data)
        faults: list[dict[str, object]] = []
        for i, (case, op, write) in enumerate((("read", Op.READ_CRC, False), ("write", Op.FILL, True))):
            addr = m.addr + i * PAGE
            between_faults(5.5 if i == 0 else 2.0)  # the workloads before may have faulted
            r = s.op(f"unbound_{case}", op, addr, length=PAGE, pattern=0xDEADBEEF, flags=OpFlag.UNBOUND_PASID)
            check(bool(r.status & Status.ERROR), f"{case} with PASID {UNBOUND_PASID} ended {r.status!r}")
            if op is Op.READ_CRC:
                check(r.result != zlib.crc32(data[:PAGE]), f"{case}: the device read the page without its PASID")
            check(m.read() == data, f"{case} with PASID {UNBOUND_PASID} changed memory: {_differ(m.read(), data)}")
            faults.append({"case": f"PASID not present, {case}", "iova": addr, "write": write,
                           "pasid": UNBOUND_PASID, "device_error": r.error.name})
        res.extra["faults"] = faults
        await_kernel_reports([m.addr, m.addr + PAGE])
        s.pages([(m.addr, 2 * PAGE)])
        m.unmap()


@workload("sva_stack_memory", "SVA: stack-like memory")
def stack_memory(env: Env | None, res: Result) -> None:
    """A ctypes buffer and a MAP_GROWSDOWN|MAP_STACK mapping, written and read by the device."""
    with session(res) as s:
        size = 3 * PAGE + 123
        buf = ctypes.create_string_buffer(size)
        addr = ctypes.addressof(buf)
        s.expect_ok("ctypes_write", s.op("ctypes_write", Op.WRITE_PATTERN, addr, length=size, pattern=0x42))
        check(buf.raw == pattern(0x42, size), f"ctypes buffer: {_differ(buf.raw, pattern(0x42, size))}")
        data = np.random.default_rng(6).integers(0, 256, size, dtype=np.uint8).tobytes()
        ctypes.memmove(addr, data, size)
        r = s.expect_ok("ctypes_crc", s.op("ctypes_crc", Op.READ_CRC, addr, length=size))
        check(r.result == zlib.crc32(data), "device CRC of the ctypes buffer differs")
        st = Region(16 * PAGE, flags=MAP_GROWSDOWN | MAP_STACK)
        top = st.addr + st.size - 4 * PAGE  # the top: where a stack is used first
        r = _first_touch(s, "stack_write", Op.WRITE_PATTERN, top, 4 * PAGE, seed=0x99)
        got = ctypes.string_at(top, 4 * PAGE)
        check(got == pattern(0x99, 4 * PAGE), "stack mapping after WRITE_PATTERN: wrong bytes")
        r = s.expect_ok("stack_crc", s.op("stack_crc", Op.READ_CRC, top, length=4 * PAGE))
        check(r.result == zlib.crc32(got), "device CRC of the stack mapping differs")
        s.pages([(addr, size), (top, 4 * PAGE)])
        st.unmap()


@workload("sva_multi_process", "SVA: several processes at once")
def multi_process(env: Env | None, res: Result) -> None:
    """Four processes bind at once, each writes and reads its own fresh memory through its
    own PASID; the PASIDs differ and each sees only its own data."""
    with session(res) as s:
        count, pages = 4, 8
        go_r, go_w = os.pipe()

        def worker(i: int) -> Callable[[], dict[str, Any]]:
            def run() -> dict[str, Any]:
                m = Region(pages * PAGE)
                with SvaDevice() as dev:
                    os.read(go_r, 1)
                    w = dev.op(Op.WRITE_PATTERN, m.addr, length=m.size, pattern=0x10 + i)
                    r = dev.op(Op.READ_CRC, m.addr, length=m.size)
                    return {"pasid": dev.info().pasid, "write": w.record(),
                            "own_data": m.read() == pattern(0x10 + i, m.size),
                            "crc_ok": r.ok and r.result == zlib.crc32(pattern(0x10 + i, m.size))}
            return run

        kids = [_child(worker(i)) for i in range(count)]
        os.write(go_w, b"x" * count)
        answers = [_collect(pid, rfd) for pid, rfd in kids]
        os.close(go_r)
        os.close(go_w)
        res.extra["children"] = answers
        pasids = [a["pasid"] for a in answers] + [s.pasid]
        check(len(set(pasids)) == len(pasids), f"PASIDs not distinct: {pasids}")
        for i, a in enumerate(answers):
            check(a["own_data"] and a["crc_ok"], f"process {i} (PASID {a['pasid']}) saw wrong data")
            check(a["write"]["page_requests"] == pages,
                  f"process {i}: {a['write']['page_requests']} page requests for {pages} fresh pages")
        res.extra["pasids"] = pasids


@workload("sva_page_request_storm", "SVA: page-request storm")
def page_request_storm(env: Env | None, res: Result) -> None:
    """One op first-touches 10,240 pages (40 MiB): as many page requests, all answered Success."""
    with session(res) as s:
        size = STORM_PAGES * PAGE
        m = Region(size)
        before = s.dev.counters()
        r = _first_touch(s, "storm", Op.WRITE_PATTERN, m.addr, size, seed=0xC3)
        after = s.dev.counters()
        ok = after["prg_success"] - before["prg_success"]
        check(ok == STORM_PAGES, f"{ok} page group responses with Success for {STORM_PAGES} requests")
        got = m.array()
        want = np.frombuffer(pattern(0xC3, size), np.uint8)
        check(bool((got == want).all()), f"storm data: {_differ(got.tobytes(), want.tobytes())}")
        res.extra["page_requests_per_s"] = round(r.page_requests / (r.wall_ns / 1e9), 1) if r.wall_ns else 0.0
        res.extra["first_touch"] = True
        s.pages([(m.addr, size)])
        del got
        m.unmap()
