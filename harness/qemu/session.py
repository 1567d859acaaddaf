"""A booted local-lab guest: QEMU + the SSH channel into it, torn down together."""

from __future__ import annotations

import fcntl
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from guest_image.build import GuestImage
from guest_image.recipe import CACHE_LABEL, READY_MARKER
from harness.guest import GuestChannel
from harness.paths import cache_dir
from harness.qemu.machine import Machine, free_port
from harness.qemu.probe import QemuInfo, probe_qemu
from harness.qemu.profiles import Profile, VmSpec, build_argv

CACHE_DISK_MIB = 512


@dataclass
class LocalSession:
    machine: Machine
    channel: GuestChannel
    spec: VmSpec
    qemu: QemuInfo
    image: GuestImage
    boot_s: float  # guest uptime when it printed the ready marker

    def open_trace(self) -> BinaryIO:
        """The vtd_* trace, read as QEMU appends to it."""
        return open(self.spec.trace_log, "rb")

    def trace_format(self) -> Path:
        """This QEMU's trace-events-all, to read the trace with."""
        return self.qemu.trace_events


def pocl_cache_disk(image: GuestImage) -> Path:
    """A persistent ext4 disk for PoCL's kernel cache, one per image: LLVM under TCG
    costs ~10 s per kernel, the cache makes a warm run fast."""
    path = cache_dir() / f"pocl-cache-{image.digest[:16]}.img"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        subprocess.run(
            ["mke2fs", "-q", "-t", "ext4", "-L", CACHE_LABEL, str(tmp), f"{CACHE_DISK_MIB}M"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tmp.rename(path)
    return path


@contextmanager
def local_guest(
    image: GuestImage,
    run_dir: Path,
    *,
    memory_mib: int = 2048,
    cpus: int = 2,
    qemu_binary: str = "qemu-system-x86_64",
    use_cache_disk: bool = True,
    ready_idle_timeout: float = 90,
    say: Callable[[str], None] = lambda _m: None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[LocalSession]:
    info = probe_qemu(qemu_binary)
    run_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        cache = None
        if use_cache_disk:
            cache = pocl_cache_disk(image)
            # One writer at a time: a second run waits rather than corrupting the cache.
            lock = stack.enter_context(open(cache.with_suffix(".lock"), "w"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        spec = VmSpec(
            kernel=image.kernel,
            initrd=image.initrd,
            rootfs=image.rootfs,
            cmdline=image.cmdline,
            run_dir=run_dir,
            memory_mib=memory_mib,
            cpus=cpus,
            ssh_port=free_port(),
            cache_disk=cache,
            extra_args=extra_args,
        )
        argv = build_argv(Profile.LOCAL_EMULATED, spec, info)
        say(f"booting the guest (QEMU {'.'.join(map(str, info.version))}, TCG, emulated VT-d)")
        machine = stack.enter_context(
            Machine(
                argv,
                run_dir,
                console_log=spec.console_log,
                qmp_socket=spec.qmp_socket,
                ram_path=spec.ram_path,
                memory_mib=memory_mib,
            )
        )
        m = machine.wait_for(rf"{READY_MARKER} ([0-9.]+)", idle_timeout=ready_idle_timeout, total_timeout=300)
        channel = stack.enter_context(
            GuestChannel("127.0.0.1", spec.ssh_port, image.ssh_key, image.host_key_pub)
        )
        channel.connect(timeout=60)
        say(f"guest ready after {m[1]} s of guest time; SSH up")
        yield LocalSession(machine, channel, spec, info, image, float(m[1]))
        if machine.is_running():
            # Flush the cache disk before QEMU goes: PoCL's kernels are worth keeping.
            try:
                channel.run("sync", timeout=60)
            except Exception:
                pass
