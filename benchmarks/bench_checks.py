"""QI completeness check speed, as a ratio to a bare Python line read of the same trace.

Run: .venv/bin/python benchmarks/bench_checks.py [--copies 40]
The real guest trace fixture is replicated to make a large file; the check parses and
replays all of it (every typed event, descriptors decoded, caches updated).
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

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "traces" / "vtd-rng256.trace.xz"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=40)
    args = ap.parse_args()
    text = lzma.decompress(FIXTURE.read_bytes()).decode()
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as fh:
        for _ in range(args.copies):
            fh.write(text)
        path = Path(fh.name)
    try:
        t0 = time.perf_counter()
        n = 0
        with open(path) as f:
            for _line in f:
                n += 1
        bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = check_qi(iter_events(path, names=QI_EVENTS), None)
        check = time.perf_counter() - t0
    finally:
        path.unlink()
    print(f"trace: {n} lines, {path.stat().st_size if path.exists() else len(text) * args.copies} bytes")
    print(f"bare line read:       {bare:.3f} s ({n / bare / 1e6:.1f} M lines/s)")
    print(f"QI completeness check: {check:.3f} s ({n / check / 1e3:.0f} k lines/s), "
          f"{result.counts['descriptors']} descriptors, {result.counts['hits']} hits replayed")
    print(f"ratio check / bare read: {check / bare:.1f}x (goal <= 15x)")


if __name__ == "__main__":
    main()
