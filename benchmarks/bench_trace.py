"""Trace parsing cost against a bare ``for line in f`` read of the same file.

Replicates the real fixture trace to ~100 MB under /tmp (cached), then times,
best of N interleaved rounds (the machine is shared: the minimum is the least
disturbed run):

* bare:      ``for line in f: pass``
* selective: iter_events(path, names=CHECK_EVENTS) -- what the QI checks read
* inv_desc:  iter_events(path, names=["vtd_inv_desc"]) + decoding every descriptor
* full:      iter_events(path) -- every line typed and checked

Run: .venv/bin/python benchmarks/bench_trace.py [--mb 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import lzma
import time
from collections.abc import Callable
from pathlib import Path

from harness.trace import InvDesc, iter_events
from harness.viommu.descriptors import QEMU_10_SM_CAPS, InvalidDescriptor

FIXTURE = Path(__file__).resolve().parent.parent / "tests/fixtures/traces/vtd-rng256-ts.trace.xz"
CHECK_EVENTS = ("vtd_inv_desc", "vtd_inv_desc_wait_sw", "vtd_inv_qi_tail", "vtd_reg_write",
                "vtd_dmar_fault", "vtd_frr_new")


def big_trace(mb: int) -> Path:
    out = Path(f"/tmp/svmval-bench-trace-{mb}mb.log")
    if not out.exists() or out.stat().st_size < mb << 20:
        one = lzma.decompress(FIXTURE.read_bytes())
        tmp = out.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            for _ in range((mb << 20) // len(one) + 1):
                fh.write(one)
        tmp.rename(out)
    return out


def bare(path: Path) -> int:
    n = 0
    with path.open() as fh:
        for _line in fh:
            n += 1
    return n


def selective(path: Path) -> int:
    return sum(1 for _ in iter_events(path, names=CHECK_EVENTS))


def inv_desc_decoded(path: Path) -> int:
    bad = 0
    for ev in iter_events(path, names=("vtd_inv_desc",)):
        if type(ev) is InvDesc and isinstance(ev.decode(caps=QEMU_10_SM_CAPS),
                                              InvalidDescriptor):
            bad += 1
    return bad


def full(path: Path) -> int:
    return sum(1 for _ in iter_events(path))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-full", action="store_true", help="the full parse takes ~1 min/GB")
    args = ap.parse_args()
    path = big_trace(args.mb)
    cases: dict[str, Callable[[Path], int]] = {
        "bare": bare, "selective": selective, "inv_desc+decode": inv_desc_decoded}
    if not args.skip_full:
        cases["full"] = full
    best: dict[str, float] = {}
    results: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            results[name] = fn(path)
            dt = time.perf_counter() - t0
            best[name] = min(best.get(name, dt), dt)
    lines = results["bare"]
    size = path.stat().st_size
    print(f"trace {path} {size / 1e6:.0f} MB, {lines} lines, best of {args.rounds}")
    for name, dt in best.items():
        print(f"{name:16s} {dt:7.3f} s  {lines / dt / 1e6:6.2f} M lines/s  "
              f"ratio {dt / best['bare']:5.1f}x  result {results[name]}")


if __name__ == "__main__":
    main()
