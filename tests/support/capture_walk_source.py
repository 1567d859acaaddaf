"""Cut the QI-across-time fixtures out of a real run's bundle (test fixture maker).

From a bundle of `svmval run --host local --workload edu_dma --workload edu_dma_fault`
on svmval's QEMU (patches/0003 traced), with or without `--seed-bug stale-use`:
consecutive lines of its trace, from the first walk of the first page edu_dma reads
again after its hold to the last hit of those pages after the hold (with the run's
descriptors, fills and hits in between), and, separately, from the walk behind
edu_dma_fault's first DMA fault to that fault. Nothing is edited: each file is a slice.

    .venv/bin/python tests/support/capture_walk_source.py BUNDLE OUT_DIR PREFIX
"""

from __future__ import annotations

import json
import lzma
import sys
from pathlib import Path


def main(bundle: Path, out: Path, prefix: str) -> None:
    doc = json.loads((bundle / "workloads.json").read_text())
    (edu,) = [r for r in doc["results"] if r["name"] == "edu_dma"]
    again = [f"iova {int(p['gva']):#x} " for p in edu["pages"] if p["access"] == "read"]
    lines = (bundle / "vm" / "trace.log").read_text().splitlines(keepends=True)
    walks = [i for i, ln in enumerate(lines) if "vtd_fs_walk_entry" in ln and again[0] in ln]
    uses = [i for i, ln in enumerate(lines) if "vtd_iotlb_hit_source" in ln and any(a in ln for a in again)]
    first, last = walks[0], uses[-1] + 1
    with lzma.open(out / f"{prefix}-edu-reuse.trace.xz", "wt") as fh:
        fh.writelines(lines[first:last])
    fault = next(i for i, ln in enumerate(lines) if "vtd_dmar_fault sid" in ln and i > last)
    start = fault
    while "vtd_fs_walk_entry" in lines[start - 1]:
        start -= 1
    (out / f"{prefix}-edu-fault.trace").write_text("".join(lines[start : fault + 1]))
    print(f"{bundle}: reuse lines {first + 1}..{last} ({last - first}), fault lines {start + 1}..{fault + 1}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
