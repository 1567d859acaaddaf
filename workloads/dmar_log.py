"""The guest kernel's DMAR fault reports: pacing faults so each is printed, and waiting
for their lines (the host checks each provoked fault against the console)."""

from __future__ import annotations

import subprocess
import time

from workloads.catalog import Failed


def between_faults(seconds: float = 2.0) -> None:
    """One fault at a time, each printed: QEMU has one fault recording register, and
    Linux's dmar_fault() (drivers/iommu/dmar.c) spends three tokens of a ratelimit of
    ten per 5 s on each fault interrupt, so a fourth fault within 5 s is cleared
    unprinted. Two seconds apart, at most three fall in any 5 s; after other faults
    (a device's ATS misses), 5.5 s lets their window close first."""
    time.sleep(seconds)


def await_kernel_reports(addrs: list[int], timeout: float = 10) -> None:
    """Wait until the kernel's log holds a DMAR report of each faulting address (the
    host reads them from the serial console, which a 7.x kernel writes from a thread
    of its own, behind the log)."""
    deadline = time.monotonic() + timeout
    while True:
        log = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
        missing = [a for a in addrs if f"fault addr {a:#x}" not in log]
        if not missing:
            time.sleep(1)  # and give the console thread its turn
            return
        if time.monotonic() > deadline:
            raise Failed("the guest kernel reported no DMAR fault for " + ", ".join(f"{a:#x}" for a in missing))
        time.sleep(0.2)
