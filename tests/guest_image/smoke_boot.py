"""Boot a guest image under the emulated VT-d and reach it over SSH: the image's own smoke test.

Deliberately independent of harness/qemu (which owns the real VM lifecycle): this
checks the image, with the exact QEMU command line the image is designed for.
Disk and network are virtio with iommu_platform=on, so the boot itself goes
through the vIOMMU.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from harness.qemu.probe import probe_qemu

QEMU = os.environ.get("SVMVAL_QEMU", "qemu-system-x86_64")
IOMMU = {"intremap": True, "caching_mode": True, "scalable_mode": True, "flts": True, "pasid": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def qemu_argv(
    kernel: Path,
    initrd: Path,
    rootfs: Path,
    cmdline: str,
    port: int,
    extra: list[str] | None = None,
) -> list[str]:
    return [
        QEMU,
        "-M",
        "q35,kernel-irqchip=split",
        "-accel",
        "tcg",
        "-cpu",
        "max,-la57",
        "-m",
        "2G",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-device",
        "intel-iommu," + probe_qemu(QEMU).iommu_args(IOMMU),
        "-drive",
        f"if=none,id=root,file={rootfs},format=raw,snapshot=on",
        "-device",
        "virtio-blk-pci-non-transitional,drive=root,iommu_platform=on",
        "-netdev",
        f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device",
        "virtio-net-pci-non-transitional,netdev=n0,iommu_platform=on",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        cmdline,
        *(extra or []),
    ]


@dataclass
class Booted:
    proc: subprocess.Popen[bytes]
    console: Path
    port: int
    started: float
    marks: dict[str, float] = field(default_factory=dict)

    def console_text(self) -> str:
        return self.console.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.console_text())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = "\n".join(self.console_text().splitlines()[-30:])
        raise AssertionError(
            f"{pattern!r} not on the console in {timeout} s; console tail:\n{tail}"
        )


@contextmanager
def boot(
    kernel: Path,
    initrd: Path,
    rootfs: Path,
    cmdline: str,
    workdir: Path,
    extra: list[str] | None = None,
) -> Iterator[Booted]:
    port = free_port()
    console = workdir / "console.log"
    argv = qemu_argv(kernel, initrd, rootfs, cmdline, port, extra)
    (workdir / "cmdline.txt").write_text(" ".join(argv) + "\n")
    with open(console, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Booted(proc, console, port, time.monotonic())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def ssh_connect(port: int, key: Path, host_key_pub: Path, timeout: float) -> paramiko.SSHClient:
    """Connect as root, trusting only the image's own host key (RejectPolicy otherwise)."""
    keytype, b64 = host_key_pub.read_text().split()[:2]
    host_key = paramiko.PKey.from_type_string(keytype, base64.b64decode(b64))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        client = paramiko.SSHClient()
        client.get_host_keys().add(f"[127.0.0.1]:{port}", keytype, host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                "127.0.0.1",
                port=port,
                username="root",
                key_filename=str(key),
                look_for_keys=False,
                allow_agent=False,
                timeout=5,
                banner_timeout=20,
                auth_timeout=20,
            )
            return client
        except paramiko.BadHostKeyException:
            client.close()
            raise
        except (OSError, paramiko.SSHException) as exc:
            client.close()
            last = exc
            time.sleep(0.5)
    raise AssertionError(f"no SSH on 127.0.0.1:{port} within {timeout} s: {last!r}")


def run(client: paramiko.SSHClient, cmd: str, timeout: float = 120) -> tuple[int, str, str]:
    _stdin, stdout, stderr = client.exec_command(cmd, timeout=timeout)
    out = stdout.read().decode(errors="replace")
    err = stderr.read().decode(errors="replace")
    return stdout.channel.recv_exit_status(), out, err
