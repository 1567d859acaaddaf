"""QI completeness check speed: time per trace line, and the ratio to a bare Python line
read of the same trace.

Run: .venv/bin/python benchmarks/bench_checks.py [--copies 40]
Two real traces (tests/fixtures/traces), each replicated to make a large file and read
with the formats of the QEMU that wrote it; the check parses and replays all of it
(every typed event, descriptors decoded, caches updated):
- stock QEMU 10.0.2 (judged at pause points only);
- svmval's QEMU with patch 0003 (judged across time: every walk entry, fill and hit).
"""

from __future__ import annotations

import argparse
import lzma
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.checks.qi import QI_EVENTS, check_qi  # noqa: E402
from harness.trace.parser import iter_events  # noqa: E402

TRACES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "traces"
CASES = (
    ("stock QEMU 10.0.2", "vtd-rng256.trace.xz", "qemu10.0.2-vtd-trace-events", 40),
    ("svmval QEMU, across time", "svmval-plain-edu-reuse.trace.xz", "qemu10.2.2-svmval0003-vtd-trace-events", 80),
)


def bench(label: str, fixture: str, formats: str, copies: int) -> float:
    text = lzma.decompress((TRACES / fixture).read_bytes()).decode()
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as fh:
        for _ in range(copies):
            fh.write(text)
        path = Path(fh.name)
    try:
        size = path.stat().st_size
        t0 = time.perf_counter()
        n = 0
        with open(path) as f:
            for _line in f:
                n += 1
        bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = check_qi(iter_events(path, names=QI_EVENTS, trace_events=TRACES / formats), None)
        check = time.perf_counter() - t0
    finally:
        path.unlink()
    print(f"== {label}: {fixture} x{copies}: {n} lines, {size} bytes")
    print(f"bare line read:        {bare:.3f} s ({n / bare / 1e6:.1f} M lines/s)")
    print(f"QI completeness check: {check:.3f} s, {check / n * 1e6:.2f} us per trace line "
          f"({n / check / 1e3:.0f} k lines/s); {result.counts['descriptors']} descriptors, "
          f"{result.counts['hits']} hits, {result.counts['fills_walked']} fills walked again")
    ratio = check / bare
    print(f"ratio check / bare read: {ratio:.1f}x (goal <= 15x)")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=0, help="replicas of each fixture (default: per fixture)")
    args = ap.parse_args()
    for label, fixture, formats, copies in CASES:
        bench(label, fixture, formats, args.copies or copies)


if __name__ == "__main__":
    main()
