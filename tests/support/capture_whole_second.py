"""Capture a real QEMU 11 trace holding whole-second timestamps (test fixture maker).

QEMU >= 11 stamps `-msg timestamp=on` lines with glib's ISO 8601, which drops the
fraction when the microseconds are 0 (`2026-12-01T20:30:37Z vtd_inv_desc ...`). Such a
line is rare in a boot (a few hundred lines per second), so this makes the unit emit
lines densely: over qtest, a 32,768-entry invalidation queue of global IOTLB
invalidations is submitted again and again for a few seconds, about two lines per
microsecond, so every second boundary lands on a line. The excerpt around the first
whole-second line is the fixture (tests/fixtures/traces/README.md).

    .venv/bin/python tests/support/capture_whole_second.py QEMU OUT_DIR [SECONDS]
"""

from __future__ import annotations

import base64
import re
import sys
import time
from pathlib import Path

from harness.qemu.qtest import VTD_BASE, QtestMachine

IQA, IQT, GCMD, QIE = 0x90, 0x88, 0x18, 1 << 26
IQ_BASE, QS = 0x100_0000, 7  # 2^(QS+8) = 32,768 descriptors of 128 bits
IOTLB_GLOBAL = (0x2 | 1 << 4).to_bytes(8, "little") + bytes(8)
WHOLE_SECOND = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
EVENTS = ("vtd_inv_desc", "vtd_inv_desc_iotlb_global", "vtd_inv_qi_head", "vtd_inv_qi_tail", "vtd_reg_write")


def capture(qemu: str, out: Path, seconds: float = 4.0, context: int = 100) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    events, trace = out / "events", out / "full-trace.log"
    events.write_text("\n".join(EVENTS) + "\n")
    n = 1 << (QS + 8)
    with QtestMachine({"caching_mode": True}, qemu=qemu, extra_args=(
            "-trace", f"events={events}", "-D", str(trace), "-msg", "timestamp=on")) as m:
        m.cmd(f"b64write {IQ_BASE:#x} {16 * n:#x} {base64.b64encode(IOTLB_GLOBAL * n).decode()}")
        m.writeq(VTD_BASE + IQA, IQ_BASE | QS)
        m.writel(VTD_BASE + GCMD, QIE)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            m.writeq(VTD_BASE + IQT, (n - 1) << 4)  # the whole queue but one ...
            m.writeq(VTD_BASE + IQT, 0)  # ... and the last one, wrapping to 0
    lines = trace.read_text().splitlines(keepends=True)
    hit = next((i for i, line in enumerate(lines) if WHOLE_SECOND.match(line)), None)
    if hit is None:
        raise SystemExit(f"no whole-second line in {len(lines)} lines; run longer")
    excerpt = out / "qemu11-whole-second.trace"
    excerpt.write_text("".join(lines[max(0, hit - context): hit + context + 1]))
    print(f"{trace}: {len(lines)} lines; whole-second line {hit + 1}: {lines[hit].strip()}")
    return excerpt


if __name__ == "__main__":
    capture(sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 4.0)
