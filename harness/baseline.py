"""The host baseline: the guest's workloads run again on the host's own OpenCL device, so
every guest bandwidth comes with the host's and their ratio.

run_host_baseline() runs `python -m workloads run ... --json` on this machine (the same
package the guest gets); attach_ratio() is pure: guest results + host results -> guest
results with `bandwidth_host` and `bandwidth_ratio` (guest / host, per flavour).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.paths import REPO_ROOT

HOST_TIMEOUT_S = 600
RATIO_NOTE = (
    "bandwidth_ratio = guest / host per flavour, the same workload on the host's own OpenCL device. "
    "Under TCG (no KVM) the guest CPU is emulated and PoCL's kernels run on it, so a ratio far below 1 "
    "(0.01-0.1) measures instruction emulation, not the vIOMMU; only a KVM guest's ratio speaks of "
    "translation overhead."
)


def run_host_baseline(names: list[str] | None, out: Path, say: Callable[[str], None]) -> dict[str, Any] | None:
    """Run `names` (all when None) on the host; the results, or None (said why) when the host has
    no OpenCL device or the run produced nothing readable. Host failures are data, not errors."""
    cmd = [sys.executable, "-m", "workloads", "run", *(names or []), "--json", str(out)]
    say(f"host baseline: {' '.join(cmd[1:])}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=HOST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        say(f"host baseline: no result, the host run took over {HOST_TIMEOUT_S} s")
        return None
    if not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        say(f"host baseline: no result (exit {proc.returncode}): {' | '.join(tail)}")
        return None
    try:
        results: dict[str, Any] = json.loads(out.read_text())
    except json.JSONDecodeError as exc:
        say(f"host baseline: unreadable {out}: {exc}")
        return None
    device = results.get("device") or {}
    if "error" in device:
        say(f"host baseline: skipped, the host has no OpenCL device ({device['error']})")
        return None
    failed = [r["name"] for r in results.get("results", []) if r.get("verdict") == "fail"]
    say(f"host baseline on {device.get('name', '?')}: {len(results.get('results', []))} workloads"
        + (f", failing on the host too: {', '.join(failed)}" if failed else ""))
    return results


def attach_ratio(guest: dict[str, Any], host: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of `guest` where every result with bandwidth gains `bandwidth_host` (flavour ->
    bytes/s, only flavours the host measured) and `bandwidth_ratio` (flavour -> guest/host),
    plus a top-level `bandwidth_baseline` saying what the ratio means and where it came from."""
    out = copy.deepcopy(guest)
    if host is None:
        out["bandwidth_baseline"] = {"host": None, "note": "no host baseline (no OpenCL device on the host?): "
                                     "bandwidth_ratio not computed"}
        return out
    by_name = {r.get("name"): r for r in host.get("results", [])}
    missing = []
    for r in out.get("results", []):
        bw = r.get("bandwidth") or {}
        if not isinstance(bw, dict) or not bw:
            continue
        h = by_name.get(r.get("name"))
        hbw = (h or {}).get("bandwidth") or {}
        if not isinstance(hbw, dict):
            hbw = {}
        if h is None or h.get("verdict") != "pass" or not hbw:
            missing.append(str(r.get("name")))
        r["bandwidth_host"] = {k: float(v) for k, v in hbw.items() if k in bw and _num(v)}
        r["bandwidth_ratio"] = {k: round(float(bw[k]) / float(v), 6) for k, v in r["bandwidth_host"].items()
                                if _num(bw[k]) and float(v) > 0}
    dev = host.get("device") or {}
    out["bandwidth_baseline"] = {
        "host": (host.get("host") or {}).get("hostname"),
        "host_device": dev.get("name"),
        "host_driver": dev.get("driver_version"),
        "note": RATIO_NOTE,
    }
    if missing:
        out["bandwidth_baseline"]["no_host_measurement"] = missing
    return out


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
