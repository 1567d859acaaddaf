"""Which guest-physical page backs a virtual address: /proc/self/pagemap."""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
MAX_PAGES = 64  # per workload: a sample, with the total recorded beside it


def gpa_of(vaddr: int) -> int | None:
    """GPA of the page holding `vaddr`, or None (not present, or not root: the PFN reads 0)."""
    return physical_address(vaddr)


def physical_address(vaddr: int, pid: int | str = "self") -> int | None:
    """Physical address behind `vaddr` in process `pid`, from /proc/PID/pagemap (root only;
    in a guest that is a GPA, on the host an HPA)."""
    try:
        with open(f"/proc/{pid}/pagemap", "rb") as f:
            f.seek((vaddr // PAGE) * 8)
            raw = f.read(8)
    except OSError:
        return None
    if len(raw) != 8:
        return None
    return pagemap_address(struct.unpack("<Q", raw)[0], vaddr)


def pagemap_address(entry: int, vaddr: int) -> int | None:
    """The physical address a pagemap entry gives for `vaddr` (None: not present)."""
    pfn = entry & ((1 << 55) - 1)
    if not entry >> 63 or pfn == 0:
        return None
    return pfn * PAGE + vaddr % PAGE


def page_records(base: int, size: int, *, content: bytes | None = None) -> tuple[list[dict[str, Any]], int]:
    """Pages of [base, base+size): a sample of at most MAX_PAGES, spread evenly, and the total.

    `content` (the range's bytes) adds each sampled page's sha256, so the host can
    confirm the device's data sits at the GPA the tables give.
    """
    first = base - base % PAGE
    total = (base + size - first + PAGE - 1) // PAGE
    step = max(1, total // MAX_PAGES)
    out = []
    for i in range(0, total, step)[:MAX_PAGES]:
        va = first + i * PAGE
        rec: dict[str, Any] = {"gva": va, "size": PAGE, "gpa": gpa_of(va)}
        if content is not None and va >= base and va + PAGE <= base + size:
            off = va - base
            rec["sha256"] = hashlib.sha256(content[off : off + PAGE]).hexdigest()
        out.append(rec)
    return out, total
