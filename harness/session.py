"""The guest session: what a run needs of a booted guest, wherever QEMU runs.

`harness.qemu.session.local_guest` (this machine) and
`host_setup.remote_vm.remote_guest` (a lab host over SSH) both yield a `GuestSession`;
the run (harness/run.py) is written against this interface only, so the local and the
lab run are one run that differs in how its session is made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from harness.viommu import GuestMemory

if TYPE_CHECKING:  # the types only: a session's own modules import this one
    from harness.guest import GuestChannel
    from harness.qemu.probe import QemuInfo


@dataclass(frozen=True)
class HostView:
    """How the host reaches guest RAM: QEMU's answers, and the QEMU process's own page
    table (its /proc/PID/pagemap, on whichever machine QEMU runs)."""

    gpa2hva: Callable[[int], int]
    gpa2hpa: Callable[[int], int]
    hva2hpa: Callable[[int], int | None]
    accel: str = "tcg"  # QEMU's -accel: under TCG no device reaches host RAM by HPA

    @property
    def hpa_leg(self) -> str:
        """What comparing QEMU's pagemap with its gpa2hpa shows, said honestly."""
        if self.accel == "kvm":
            return "HPA from the host's real page table (the QEMU process's pagemap), against QEMU's gpa2hpa"
        return (f"HPA under {self.accel.upper()}: QEMU's own view (its pagemap and its gpa2hpa read the same "
                "table), a consistency check only")


def accel_of(argv: list[str]) -> str:
    """The accelerator a QEMU command line asks for (TCG when it names none)."""
    for i, word in enumerate(argv[:-1]):
        if word == "-accel":
            return argv[i + 1].split(",")[0]
    return "tcg"


class VmControl(Protocol):
    """The VM as the run drives it (QMP and the files QEMU writes)."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def guest_memory(self, *, writable: bool = False) -> GuestMemory: ...

    def host_view(self) -> HostView: ...

    def console_text(self) -> str: ...


class GuestSession(Protocol):
    """A booted guest: its command channel, its VM, and what QEMU recorded."""

    @property
    def channel(self) -> GuestChannel: ...

    @property
    def machine(self) -> VmControl: ...

    @property
    def qemu(self) -> QemuInfo: ...

    @property
    def boot_s(self) -> float: ...

    def open_trace(self) -> BinaryIO:
        """The vtd_* trace, readable while QEMU appends to it (harness.trace.follow)."""
        ...

    def trace_format(self) -> Path:
        """The trace-events-all of the QEMU that writes the trace, as a local file."""
        ...
