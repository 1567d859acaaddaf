"""The local lab's guest, for real: QEMU TCG, the emulated VT-d, the Debian guest, PoCL."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import pytest

from guest_image.build import GuestImage, ensure_image
from harness.errors import GuestError
from harness.qemu.profiles import SLOT_DISK, sid_of
from harness.qemu.session import local_guest
from harness.trace.events import RegDmarRoot
from harness.trace.parser import iter_events

pytestmark = pytest.mark.slow

ONE_KERNEL = r"""
import numpy as np, pyopencl as cl
ctx = cl.create_some_context(interactive=False)
q = cl.CommandQueue(ctx)
prg = cl.Program(ctx, "__kernel void twice(__global int *a) { int i = get_global_id(0); a[i] = 2 * a[i]; }").build()
svm = cl.SVM(cl.fsvm_empty(ctx, 1024, np.int32))
with svm.map_rw(q) as a:
    a[:] = np.arange(1024)
prg.twice(q, (1024,), None, svm)
with svm.map_ro(q) as a:
    assert (a == 2 * np.arange(1024)).all()
print("KERNEL-OK", ctx.devices[0].name)
"""


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return ensure_image()


def qemu_pids() -> set[int]:
    pids = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip().startswith("qemu-system"):
                    pids.add(int(pid))
            except OSError:
                pass
    return pids


def test_guest_runs_pocl_and_its_viommu_tables_are_readable(image: GuestImage, artifacts_dir: Path) -> None:
    before = qemu_pids()
    with local_guest(image, artifacts_dir / "vm") as g:
        r = g.channel.run("python3 -c 'import pyopencl'")
        assert r.ok, r.stderr
        r = g.channel.run(f"python3 -c '{ONE_KERNEL.replace(chr(39), chr(34))}'", timeout=300)
        assert r.ok and "KERNEL-OK" in r.stdout, r.stderr
        # The guest kernel enabled scalable-mode translation: find the root table it
        # programmed in the trace and read it through the shared RAM file.
        roots = [ev.addr for ev in iter_events(g.spec.trace_log, names=["vtd_reg_dmar_root"])
                 if isinstance(ev, RegDmarRoot)]
        assert roots, "no vtd_reg_dmar_root in the trace"
        mem = g.machine.guest_memory()
        bus0 = mem.read_u64(roots[-1])
        assert bus0 & 1, "bus 0 root entry not present (LP=0)"
        ctx = (bus0 & ~0xFFF) + (sid_of(SLOT_DISK) & 0x7F) * 32
        assert mem.read_u64(ctx) & 1, "the virtio disk's scalable-mode context entry is not present"
    assert qemu_pids() == before, "QEMU left running after the guest session"
    assert (artifacts_dir / "vm" / "console.log").read_text().count("SVMVAL-GUEST-READY") == 1
    assert (artifacts_dir / "vm" / "trace.log").stat().st_size > 0


def test_guest_that_never_answers_fails_with_console_tail(image: GuestImage, tmp_path: Path) -> None:
    # Kernel messages go to a console nobody reads and init just sleeps: the guest
    # never reaches its ready marker and the serial log stays silent.
    assert "console=ttyS0 " in image.cmdline  # the serial console the harness reads ...
    silent = dataclasses.replace(
        image,
        cmdline=image.cmdline.replace("console=ttyS0 ", "console=tty0 ")  # ... moved away
        + " rdinit=/bin/busybox -- sleep 600",
    )
    assert "ttyS0" not in silent.cmdline
    before = qemu_pids()
    with pytest.raises(GuestError) as exc:
        with local_guest(silent, tmp_path / "vm", use_cache_disk=False, ready_idle_timeout=8):
            pass
    assert "console" in str(exc.value) and "cmdline.txt" in str(exc.value)
    assert qemu_pids() == before


def test_qemu_dying_mid_run_is_a_clear_error_and_nothing_is_left(image: GuestImage, tmp_path: Path) -> None:
    before = qemu_pids()
    with pytest.raises(GuestError, match="exit|QEMU|SSH|transport"):
        with local_guest(image, tmp_path / "vm", use_cache_disk=False) as g:
            proc = g.machine.proc
            assert proc is not None
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            g.machine.wait_for("never printed", idle_timeout=5, total_timeout=10)
    assert qemu_pids() == before
