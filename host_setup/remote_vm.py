"""The guest on a lab host: image sent once, QEMU started through the SSH session, the
guest reached through that same connection, artefacts brought back.

QEMU runs detached on the host (setsid, stdio to files in the run directory), its pid
and a run-unique `-name` tag go into the host's journal before it can touch the
device, so restore stops this QEMU and never another. The guest's SSH forward listens
on the host's 127.0.0.1; the harness reaches it with a direct-tcpip channel through
the host's SSH connection, never through an open port.
"""

from __future__ import annotations

import re
import shlex
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from qemu.qmp.legacy import QEMUMonitorProtocol

from guest_image.build import GuestImage
from guest_image.recipe import READY_MARKER
from harness.errors import ConfigError, EnvironmentBroken, GuestError
from harness.guest import GuestChannel
from harness.inventory import HostSpec, KnownHostsPolicy, Nesting
from harness.qemu.machine import QmpControl
from harness.qemu.probe import QemuInfo, parse_probe
from harness.qemu.profiles import Profile, VmSpec, build_argv, trace_events_text
from harness.remote import SshTarget
from harness.session import HostView, accel_of
from harness.viommu.memory import GuestMemory, Region, q35_regions
from host_setup.provision import LabHost, QemuProcess
from workloads.pages import pagemap_address

Say = Callable[[str], None]
IMAGE_FILES = ("kernel", "initrd", "rootfs")
VM_FILES = ("console.log", "trace.log", "qemu.stderr", "cmdline.txt")


def probe_remote_qemu(t: SshTarget, binary: str) -> QemuInfo:
    path = t.check(f"command -v {shlex.quote(binary)}").strip()
    return parse_probe(path, lambda *args: t.check(shlex.join([path, *args]), timeout=60))


def send_image(t: SshTarget, host: HostSpec, image: GuestImage, say: Say) -> PurePosixPath:
    """The image's files in the host's workdir, keyed by its digest: sent once."""
    remote = PurePosixPath(host.workdir) / "images" / image.digest
    if t.run(f"test -e {shlex.quote(str(remote / '.complete'))}").ok:
        say(f"{host.name}: image {image.digest[:12]} already there")
        return remote
    say(f"{host.name}: sending image {image.digest[:12]}")
    t.check(f"rm -rf {shlex.quote(str(remote))} && mkdir -p {shlex.quote(str(remote))}")
    for name in IMAGE_FILES:
        t.put(getattr(image, name), str(remote / getattr(image, name).name))
    t.check(f"touch {shlex.quote(str(remote / '.complete'))}")
    return remote


@contextmanager
def qmp_tunnel(host: HostSpec, remote_socket: str) -> Iterator[Path]:
    """QEMU's QMP socket on the host as a unix socket here: OpenSSH's -L forward with
    the inventory's key and known_hosts (verified as the harness's own connection is)."""
    local_dir = Path(tempfile.mkdtemp(prefix="svmval-qmp-"))
    local = local_dir / "qmp.sock"
    argv = ["ssh", "-N", "-p", str(host.port), "-L", f"{local}:{remote_socket}",
            "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "ConnectTimeout=15",
            "-o", "IdentitiesOnly=yes"]
    if host.key_file is not None:
        argv += ["-i", str(host.key_file)]
    if host.known_hosts_policy is KnownHostsPolicy.ACCEPT_NEW_INSECURE:
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    else:
        argv += ["-o", "StrictHostKeyChecking=yes"]
        if host.known_hosts is not None:
            argv += ["-o", f"UserKnownHostsFile={host.known_hosts}"]
    argv.append(f"{host.user}@{host.address}")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not local.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr and proc.poll() is not None else ""
                raise EnvironmentBroken(f"the QMP forward to {host.name!r} did not come up: {err.strip()}")
            time.sleep(0.1)
        yield local
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(local_dir, ignore_errors=True)


class RemoteMachine(QmpControl):
    """A QEMU process on a lab host, driven over QMP through an SSH forward."""

    def __init__(self, t: SshTarget, lab: LabHost, run_dir: PurePosixPath, memory_mib: int,
                 ram_path: PurePosixPath):
        self.t, self.lab, self.run_dir, self.memory_mib = t, lab, run_dir, memory_mib
        self.ram_path = ram_path  # VmSpec.ram_path: run_dir/guest-ram, or a hugepages file
        self.proc: QemuProcess | None = None
        self.accel = "tcg"  # set from the command line at launch
        self.qmp: QEMUMonitorProtocol | None = None

    def attach_qmp(self, remote_socket: str, local_socket: Path) -> None:
        remote = shlex.quote(remote_socket)
        deadline = time.monotonic() + 30
        while not self.t.run(f"test -S {remote}").ok:
            if not self.is_running() or time.monotonic() > deadline:
                raise GuestError(f"QEMU on {self.lab.host.name!r} never opened its QMP socket; its stderr:\n"
                                 f"{self.file_tail('qemu.stderr')}")
            time.sleep(0.2)
        self.qmp = QEMUMonitorProtocol(str(local_socket))
        self.qmp.connect(negotiate=True)

    def detach_qmp(self) -> None:
        if self.qmp is not None:
            try:
                self.qmp.close()
            finally:
                self.qmp = None

    def host_view(self) -> HostView:
        return HostView(self.gpa2hva, self.gpa2hpa, self._hva2hpa, self.accel)

    def _hva2hpa(self, hva: int) -> int | None:
        """QEMU's own pagemap entry for `hva`, read on the host (root only)."""
        assert self.proc is not None
        r = self.t.run(f"dd if=/proc/{self.proc.pid}/pagemap bs=8 skip={hva // 4096} count=1 2>/dev/null "
                       f"| od -An -tx8")
        words = r.stdout.split()
        return pagemap_address(int(words[0], 16), hva) if r.ok and words else None

    def launch(self, argv: list[str], tag: str) -> None:
        # Journaled before it starts (pid unknown): restore finds it by its tag if the
        # launch itself is cut short.
        self.lab.note_qemu(0, tag)
        rd = shlex.quote(str(self.run_dir))
        cmd = (f"cd {rd} && {{ setsid nohup {shlex.join(argv)} < /dev/null > qemu.stdout 2> qemu.stderr & "
               f"echo $!; }}")
        pid = int(self.t.check(cmd).strip())
        self.proc = QemuProcess(pid, tag)
        self.accel = accel_of(argv)
        self.lab.note_qemu(pid, tag)

    def is_running(self) -> bool:
        return self.proc is not None and self.lab._ours(self.proc)

    def file_tail(self, name: str, lines: int = 30) -> str:
        return self.t.run(f"tail -n {lines} {shlex.quote(str(self.run_dir / name))}").stdout

    def wait_for(self, pattern: str, *, total_timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + total_timeout
        console = shlex.quote(str(self.run_dir / "console.log"))
        while True:
            m = re.search(pattern, self.t.run(f"cat {console} 2>/dev/null").stdout)
            if m:
                return m
            if not self.is_running():
                raise GuestError(
                    f"QEMU on {self.lab.host.name!r} exited before the guest was ready; its stderr:\n"
                    f"{self.file_tail('qemu.stderr')}\nconsole tail:\n{self.file_tail('console.log')}"
                )
            if time.monotonic() > deadline:
                raise GuestError(f"the guest on {self.lab.host.name!r} did not print {READY_MARKER} in "
                                 f"{total_timeout:.0f} s; console tail:\n{self.file_tail('console.log')}")
            time.sleep(1)

    def stop(self, channel: GuestChannel | None) -> None:
        """Power the guest off from inside; SIGTERM/SIGKILL (restore's way) if it lingers."""
        if self.proc is None or not self.is_running():
            return
        if channel is not None:
            try:
                channel.run("sync; poweroff -f >/dev/null 2>&1 &", timeout=20)
            except Exception:
                pass
            deadline = time.monotonic() + 20
            while self.is_running() and time.monotonic() < deadline:
                time.sleep(0.5)
        self.lab.stop_qemu(self.proc)

    def console_text(self) -> str:
        return self.t.run(f"cat {shlex.quote(str(self.run_dir / 'console.log'))}").stdout

    def guest_memory(self, *, writable: bool = False) -> GuestMemory:
        """Guest RAM read over SFTP, a chunk at a time (pause first: it is live)."""
        if writable:
            raise EnvironmentBroken("guest RAM on a lab host is read-only to the harness")
        sftp = self.t.transport.open_sftp_client()
        where = f"{self.lab.host.name}:{self.ram_path}"
        size = self.memory_mib << 20
        try:
            have = sftp.stat(str(self.ram_path)).st_size or 0
        except OSError as e:
            raise ConfigError(f"guest memory file {where} cannot be read ({e}); start the VM with "
                              "memory-backend-file,share=on or fix the path") from e
        # A file shorter than the guest's RAM would read as short chunks: a struct.error,
        # or a smaller number where a page-table entry was. Name it, like from_file does.
        if have < size:
            raise ConfigError(
                f"guest memory file {where} is {have:#x} bytes, shorter than the guest's RAM "
                f"({size:#x} bytes); use the file QEMU's memory-backend-file wrote for this VM, "
                "or give the guest's real memory size")
        f = sftp.open(str(self.ram_path), "rb")
        return _RemoteMemory(_RemoteBytes(f, size, where), q35_regions(size))


class _RemoteMemory(GuestMemory):
    """GuestMemory whose reads go through `read` (no buffer protocol underneath)."""

    def __init__(self, backing: _RemoteBytes, regions: list[Region]):
        super().__init__(backing, regions)  # type: ignore[arg-type]
        self.flat = None  # the walkers' fast path unpacks from a real buffer
        self._writable = False

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 4), "little")

    def read_qwords(self, gpa: int, count: int) -> tuple[int, ...]:
        return struct.unpack(f"<{count}Q", self.read(gpa, 8 * count))


class _RemoteBytes:
    """Enough of a bytes-like object for GuestMemory.read: sliced reads of a remote file,
    cached in 64 KiB chunks."""

    CHUNK = 64 << 10

    def __init__(self, f: Any, size: int, where: str):
        self.f, self.size, self.where = f, size, where
        self.cache: dict[int, bytes] = {}

    def __len__(self) -> int:
        return self.size

    def _chunk(self, i: int) -> bytes:
        if i not in self.cache:
            self.f.seek(i * self.CHUNK)
            self.cache[i] = self.f.read(self.CHUNK)
        return self.cache[i]

    def __getitem__(self, s: slice) -> bytes:
        start, stop = s.start, s.stop
        out = bytearray()
        while start < stop:
            i, off = divmod(start, self.CHUNK)
            part = self._chunk(i)[off : off + stop - start]
            if not part:
                # Checked at open, so the file was cut while the guest ran.
                raise ConfigError(
                    f"guest memory file {self.where} has nothing at offset {start:#x}: it is now "
                    f"{self.f.stat().st_size:#x} bytes, shorter than the guest's RAM ({self.size:#x} bytes); "
                    "was it cut or replaced during the run?")
            out += part
            start += len(part)
        return bytes(out)


@dataclass
class RemoteSession:
    machine: RemoteMachine
    channel: GuestChannel
    spec: VmSpec
    qemu: QemuInfo
    image: GuestImage
    boot_s: float
    local_vm_dir: Path

    def open_trace(self) -> BinaryIO:
        """The trace on the host, read over SFTP as QEMU appends to it."""
        sftp = self.machine.t.transport.open_sftp_client()
        return sftp.open(str(self.spec.trace_log), "rb")

    def trace_format(self) -> Path:
        local = self.local_vm_dir / "trace-events-all"
        if not local.exists():
            t, binary = self.machine.t, self.qemu.binary
            beside = str(PurePosixPath(t.check(f"readlink -f {shlex.quote(binary)}").strip()).parent)
            for candidate in (f"{beside}/trace-events-all", "/usr/share/qemu/trace-events-all"):
                if t.run(f"test -e {shlex.quote(candidate)}").ok:
                    t.get(candidate, local)
                    break
            else:
                raise EnvironmentBroken(f"{binary} on {self.machine.lab.host.name!r} has no trace-events-all: "
                                        f"install its data files (Debian: qemu-system-data)")
        return local


@contextmanager
def remote_guest(
    t: SshTarget, lab: LabHost, image: GuestImage, run_id: str, local_vm_dir: Path, say: Say
) -> Iterator[RemoteSession]:
    host = lab.host
    info = probe_remote_qemu(t, host.qemu)
    images = send_image(t, host, image, say)
    run_dir = PurePosixPath(host.workdir) / "runs" / run_id
    t.check(f"mkdir -p {shlex.quote(str(run_dir))}")
    port = int(t.check("python3 -c 'import socket; s=socket.socket(); s.bind((\"127.0.0.1\", 0)); "
                       "print(s.getsockname()[1])'").strip())
    nested = host.nesting is Nesting.IOMMUFD_FLTS
    spec = VmSpec(
        kernel=Path(str(images / image.kernel.name)),
        initrd=Path(str(images / image.initrd.name)),
        rootfs=Path(str(images / image.rootfs.name)),
        cmdline=image.cmdline,
        run_dir=Path(str(run_dir)),
        memory_mib=host.guest_memory_mib,
        cpus=host.guest_cpus,
        ssh_port=port,
        device=host.device if nested else None,
        hugepage_ram=nested,
        hugepages_path=Path(host.hugepages_mount),
        local=False,
    )
    argv = build_argv(Profile.LAB_NESTED if nested else Profile.LOCAL_EMULATED, spec, info)
    tag = f"svmval-{run_id}"
    argv[argv.index("-name") + 1] = tag
    t.write_text(str(spec.trace_events), trace_events_text(spec))
    t.write_text(str(run_dir / "cmdline.txt"), shlex.join(argv) + "\n")
    (local_vm_dir).mkdir(parents=True, exist_ok=True)
    machine = RemoteMachine(t, lab, run_dir, host.guest_memory_mib, PurePosixPath(str(spec.ram_path)))
    channel: GuestChannel | None = None
    say(f"{host.name}: booting the guest ({'lab-nested, KVM' if nested else 'emulated VT-d, TCG'}, QEMU "
        f"{'.'.join(map(str, info.version))})")
    stack = ExitStack()
    try:
        machine.launch(argv, tag)
        qmp_socket = str(spec.qmp_socket)  # a short name in /tmp when run_dir is deep
        machine.attach_qmp(qmp_socket, stack.enter_context(qmp_tunnel(host, qmp_socket)))
        m = machine.wait_for(rf"{READY_MARKER} ([0-9.]+)", total_timeout=300)

        def tunnel() -> Any:
            return t.transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0))

        channel = GuestChannel("127.0.0.1", port, image.ssh_key, image.host_key_pub, via=tunnel)
        channel.connect(timeout=60)
        say(f"{host.name}: guest ready after {m[1]} s of guest time; SSH up through the host")
        yield RemoteSession(machine, channel, spec, info, image, float(m[1]), local_vm_dir)
    finally:
        _kernel_logs(t, channel, local_vm_dir)
        try:
            machine.detach_qmp()
            machine.stop(channel)
            if spec.hugepage_ram:  # a hugetlbfs file keeps its pages until it is removed
                t.run(f"rm -f {shlex.quote(str(spec.ram_path))}")
        finally:
            if channel is not None:
                channel.close()
            stack.close()
            fetch_vm_files(t, run_dir, local_vm_dir)


def _kernel_logs(t: SshTarget, channel: GuestChannel | None, local_vm_dir: Path) -> None:
    """Both kernels' side of the story: the guest's dmesg and the host's (DMAR, VFIO)."""
    sources: list[tuple[str, Callable[[], Any]]] = [("host-dmesg.log", lambda: t.run("dmesg", timeout=30))]
    if channel is not None:
        sources.insert(0, ("guest-dmesg.log", lambda: channel.run("dmesg", timeout=30)))
    for name, read in sources:
        try:
            r = read()
            (local_vm_dir / name).write_text(r.stdout if r.ok else f"dmesg failed (exit {r.exit_code}): {r.stderr}")
        except Exception as exc:  # a dead guest or a lost host: say so in the file
            (local_vm_dir / name).write_text(f"dmesg could not be read: {exc}\n")


def fetch_vm_files(t: SshTarget, run_dir: PurePosixPath, local_vm_dir: Path) -> None:
    """Bring back console, trace, stderr, command line: whatever exists, whatever happened."""
    for name in VM_FILES:
        remote = str(run_dir / name)
        try:
            if t.run(f"test -e {shlex.quote(remote)}").ok:
                t.get(remote, local_vm_dir / name)
        except Exception:
            continue  # a lost connection: restore reports it; keep what came back
