"""svmval-sva through the vIOMMU: device throughput per operation and the page-request
round trip, from one local-lab run (boots the guest: about 2 minutes under TCG).

Run: .venv/bin/python benchmarks/bench_device.py [--artifacts DIR]
Figures are in guest time (the device's QEMU_CLOCK_VIRTUAL nanoseconds) and in wall time
(the driver's ktime from doorbell to interrupt); under TCG both are the emulator's speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.inventory import load_inventory  # noqa: E402
from harness.results import DATA_PRQ_LATENCY_US  # noqa: E402
from harness.run import run  # noqa: E402

WORKLOADS = ["sva_read_crc", "sva_first_touch", "sva_page_request_storm"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", type=Path, default=None)
    args = ap.parse_args()
    out = args.artifacts or Path(tempfile.mkdtemp(prefix="svmval-bench-device-"))
    t0 = time.monotonic()
    outcome = run(load_inventory(None).get("local"), out, workloads=WORKLOADS)
    wall = time.monotonic() - t0
    results = {r["name"]: r for r in (outcome.workloads or {}).get("results", [])}
    print(f"run: {outcome.bundle.manifest.verdict.value} in {wall:.0f} s ({outcome.bundle.path})")
    for name in WORKLOADS:
        r = results.get(name)
        if r is None or r["verdict"] != "pass":
            print(f"{name}: {r['verdict'] if r else 'missing'} {r.get('reason', '') if r else ''}")
            continue
        c = r.get("counters_delta", {})
        looked = c.get("atc_hits", 0) + c.get("atc_misses", 0)
        print(f"{name}: {c.get('ops', 0)} ops, {c.get('page_requests', 0)} page requests, ATC hit rate "
              f"{100 * c.get('atc_hits', 0) / looked if looked else 0:.0f}% of {looked} page lookups")
        for op in r.get("ops", []):
            if op.get("device_ns") and op.get("len"):
                dev_mbs, wall_mbs = op["len"] / op["device_ns"] * 1e3, op["len"] / op["wall_ns"] * 1e3
                print(f"  {op['label']:24} {op['op']:13} {op['len']:>9} B  device {dev_mbs:8.1f} MB/s  "
                      f"wall {wall_mbs:8.1f} MB/s  page requests {op['page_requests']}")
    prq = [c for c in outcome.checks if c.name == "prq"]
    lat = sorted(prq[0].data.get(DATA_PRQ_LATENCY_US, [])) if prq else []
    if lat:
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        print(f"page request -> response (trace timestamps, wall): {len(lat)} round trips, median "
              f"{statistics.median(lat):.0f} us, p99 {p99:.0f} us")
    else:
        print("page request round trip: no latencies (no prq check with data)")


if __name__ == "__main__":
    main()
