"""SVM bandwidth per flavour on this host's OpenCL device.

Run: .venv/bin/python benchmarks/bench_workloads.py [--mib 64] [--rounds 5]
A kernel reads and writes every int of the allocation (2 x size bytes moved per launch);
the best of `rounds` launches is reported, after one warm-up launch (first touch).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyopencl as cl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workloads.capabilities import Svm, select_device  # noqa: E402
from workloads.svm import KERNELS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)  # larger than any L3: memory, not cache
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    _p, dev, info = select_device(None)
    ctx = cl.Context([dev])
    q = cl.CommandQueue(ctx)
    knl = cl.Kernel(cl.Program(ctx, KERNELS).build(options="-cl-std=CL3.0"), "scale")
    n = args.mib * (1 << 20) // 4

    def launch(arg: object) -> float:
        best = float("inf")
        for i in range(args.rounds + 1):
            t0 = time.perf_counter()
            knl(q, (n,), None, arg, np.int32(3))
            q.finish()
            if i:  # the first launch pays first-touch page faults
                best = min(best, time.perf_counter() - t0)
        return 2 * n * 4 / best / 1e9

    flavours: list[tuple[str, Svm | None, Callable[[], object]]] = [
        ("cl.Buffer (baseline)", None, lambda: cl.Buffer(ctx, cl.mem_flags.READ_WRITE, n * 4)),
        ("coarse-grain SVM", Svm.COARSE_GRAIN_BUFFER, lambda: cl.SVM(cl.csvm_empty(ctx, n, np.int32))),
        ("fine-grain buffer SVM", Svm.FINE_GRAIN_BUFFER, lambda: cl.SVM(cl.fsvm_empty(ctx, n, np.int32))),
        ("fine-grain system SVM", Svm.FINE_GRAIN_SYSTEM, lambda: cl.SVM(np.zeros(n, np.int32))),
    ]
    print(f"device: {info.name} ({info.version}); {args.mib} MiB, best of {args.rounds}")
    print(f"{'flavour':26} GB/s")
    for name, need, make in flavours:
        if need is not None and not info.has(need):
            print(f"{name:26} skipped: device lacks it")
            continue
        print(f"{name:26} {launch(make()):6.2f}")


if __name__ == "__main__":
    main()
