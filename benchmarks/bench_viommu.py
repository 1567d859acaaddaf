"""VT-d model throughput: IOTLB hits, full nested walks, QI descriptors, page requests.

Run: ``.venv/bin/python benchmarks/bench_viommu.py`` (prints one line per figure), or
``.venv/bin/python -m pytest benchmarks/bench_viommu.py`` (pytest-benchmark).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.viommu import GuestMemory, PasidEntry, Pgtt, Reg, TableBuilder, VtdModel  # noqa: E402
from harness.viommu.registers import Gcmd  # noqa: E402

SID = 0x0018
PASID = 0x42
PAGES = 512


def _nested_rig() -> tuple[VtdModel, list[int]]:
    mem = GuestMemory(32 << 20)
    b = TableBuilder(mem, 0x10_0000, 32 << 20)
    ss = b.ss_tables(4)
    fs = b.fs_tables(4, ss=ss, gpa_offset=0x40_0000_0000)
    addrs = []
    for i in range(PAGES):
        va = 0x7F00_0000_0000 + i * 4096
        gpa = 0x1_0000_0000 + i * 4096
        fs.map(va, gpa, accessed=True, dirty=True)
        ss.map(gpa, 0x80_0000 + i * 4096)
        addrs.append(va + 0x10)
    b.set_sm_context(SID)
    b.set_pasid_entry(SID, PASID, PasidEntry(p=1, pgtt=Pgtt.NESTED, did=3, aw=2,
                                             slptptr=ss.root, flptptr=fs.root))
    m = VtdModel(mem)
    m.enable(b.root)
    return m, addrs


def bench_iotlb_hits(seconds: float = 1.0) -> dict[str, float]:
    m, addrs = _nested_rig()
    m.translate_many(SID, addrs, pasid=PASID)  # fill
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for a in addrs:
            m.translate(SID, a, pasid=PASID)
        n += len(addrs)
    single = n / (time.perf_counter() - t0)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        m.translate_many(SID, addrs, pasid=PASID)
        n += len(addrs)
    batch = n / (time.perf_counter() - t0)
    return {"iotlb_hit_translate_per_s": single, "iotlb_hit_batch_per_s": batch}


def bench_nested_walks(seconds: float = 1.0) -> dict[str, float]:
    m, addrs = _nested_rig()
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        m.walk_many(SID, addrs, pasid=PASID)
        n += len(addrs)
    cold = n / (time.perf_counter() - t0)
    return {"nested_full_walk_per_s": cold}


def _qi_rig() -> tuple[VtdModel, int, int]:
    mem = GuestMemory(4 << 20)
    m = VtdModel(mem)
    base = 0x10_0000
    m.write_reg(Reg.IQA, base | (1 << 11) | 5, 8)  # 256-bit, 2^5 pages = 4096 entries
    m.write_reg(Reg.GCMD, Gcmd.QIE)
    return m, base, 4096


def bench_qi(seconds: float = 1.0) -> dict[str, float]:
    m, base, size = _qi_rig()
    mem = m.memory
    # A realistic mix: PASID-IOTLB page-selective + wait with status write.
    for i in range(size):
        at = base + 32 * i
        if i % 2 == 0:
            mem.write_u64(at, 0x6 | (3 << 4) | (3 << 16) | (PASID << 32))
            mem.write_u64(at + 8, (i * 4096) & ~0xFFF)
        else:
            mem.write_u64(at, 0x5 | (1 << 5) | (2 << 32))
            mem.write_u64(at + 8, 0x8000)
        mem.write_u64(at + 16, 0)
        mem.write_u64(at + 24, 0)
    n = 0
    tail = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tail = (tail + 256) % size
        before = m.read_reg(Reg.IQH, 8)
        m.write_reg(Reg.IQT, tail * 32, 8)
        after = m.read_reg(Reg.IQH, 8)
        n += ((after - before) // 32) % size or 0
    return {"qi_descriptors_per_s": n / (time.perf_counter() - t0)}


def bench_prq(seconds: float = 1.0) -> dict[str, float]:
    mem = GuestMemory(4 << 20)
    b = TableBuilder(mem, 0x20_0000, 4 << 20)
    b.set_sm_context(SID, pre=1, dte=1)
    m = VtdModel(mem)
    m.enable(b.root)
    m.write_reg(Reg.PQA, 0x10_0000 | 4, 8)  # 64 KiB
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i in range(256):
            m.page_request(SID, i * 4096, pasid=PASID, write=True, prgi=i & 0x1FF, last=True)
        n += 256
        m.write_reg(Reg.PQH, m.read_reg(Reg.PQT, 8), 8)  # software drains the queue
        m.write_reg(Reg.PRS, 1)
    return {"page_requests_per_s": n / (time.perf_counter() - t0)}


ALL: list[Callable[..., dict[str, float]]] = [bench_iotlb_hits, bench_nested_walks, bench_qi,
                                              bench_prq]


def main() -> None:
    for fn in ALL:
        for k, v in fn().items():
            print(f"{k:32s} {v:>14,.0f}")


# -- pytest-benchmark entry points ---------------------------------------------------------
def test_bench_iotlb_hit(benchmark: Any) -> None:
    m, addrs = _nested_rig()
    m.translate_many(SID, addrs, pasid=PASID)
    out = benchmark(m.translate_many, SID, addrs, pasid=PASID)
    assert None not in out


def test_bench_nested_walk(benchmark: Any) -> None:
    m, addrs = _nested_rig()
    out = benchmark(m.walk_many, SID, addrs, pasid=PASID)
    assert all(t.ok for t in out)


if __name__ == "__main__":
    main()
