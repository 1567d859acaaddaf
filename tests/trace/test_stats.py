"""`svmval trace stats`: a user's first look at a trace, on real QEMU 10 and 11 traces."""

from __future__ import annotations

import json
import lzma
import subprocess
import sys
from pathlib import Path
from typing import Any

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "traces"


def stats(path: Path, formats: Path) -> dict[str, Any]:  # the --json document
    out = subprocess.run([sys.executable, "-m", "harness.cli", "trace", "stats", str(path), "--formats",
                          str(formats), "--json"], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout)


def test_a_qemu10_boot_trace(tmp_path: Path) -> None:
    trace = tmp_path / "trace.log"
    trace.write_bytes(lzma.decompress((TRACES / "vtd-rng256-ts.trace.xz").read_bytes()))
    s = stats(trace, TRACES / "qemu10.0.2-vtd-trace-events")
    assert s["lines"] == 13944 and s["bad_lines"] == [] and s["qemu"].startswith("<= 10")
    assert s["descriptors"]["wait"] > 0 and s["translations"] == s["events"]["vtd_dmar_translate"] > 0


def test_a_qemu11_trace_with_a_bad_line_names_it(tmp_path: Path) -> None:
    lines = (TRACES / "qemu11-whole-second.trace").read_text().splitlines(keepends=True)
    assert "type iotlb" in lines[10]
    lines[10] = lines[10].replace("type iotlb", "tpye iotlb")
    trace = tmp_path / "trace.log"
    trace.write_text("".join(lines))
    s = stats(trace, TRACES / "qemu11.1.3-vtd-trace-events")
    assert s["qemu"].startswith(">= 11") and s["lines"] == 201 and s["descriptors"] == {"iotlb": 66}
    assert [b["line"] for b in s["bad_lines"]] == [11]
