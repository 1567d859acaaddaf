"""A QEMU guest as a context manager that never leaves a QEMU behind.

Style of QEMU's python/qemu QEMUMachine: launch, QMP (the qemu.qmp library) on a
unix socket, soft then hard shutdown, a launch error carrying the command line
and QEMU's own output.  Console waits time out when the console stops moving,
not at a fixed deadline, with an overall cap (users of other suites complain of
hangs and of kernel messages breaking prompt matching: we match a marker line).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from qemu.qmp.legacy import QEMUMonitorProtocol

from harness.errors import GuestError
from harness.session import HostView, accel_of
from harness.viommu import GuestMemory
from harness.viommu.memory import q35_regions
from workloads.pages import physical_address


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class QmpControl:
    """QMP commands a run needs, for a QEMU here or on a lab host (through a tunnel)."""

    qmp: QEMUMonitorProtocol | None

    def command(self, cmd: str, **args: Any) -> Any:
        if self.qmp is None:
            raise GuestError("QMP is not connected (the VM is not running)")
        return self.qmp.cmd(cmd, **args)

    def hmp(self, line: str) -> str:
        return str(self.command("human-monitor-command", **{"command-line": line}))

    def pause(self) -> None:
        self.command("stop")

    def resume(self) -> None:
        self.command("cont")

    def status(self) -> str:
        return str(self.command("query-status")["status"])

    def gpa2hva(self, gpa: int) -> int:
        return self._hmp_address("gpa2hva", gpa)

    def gpa2hpa(self, gpa: int) -> int:
        return self._hmp_address("gpa2hpa", gpa)

    def _hmp_address(self, verb: str, gpa: int) -> int:
        """HMP's "... is 0x..." answer to gpa2hva/gpa2hpa, as a number."""
        out = self.hmp(f"{verb} {gpa:#x}")
        m = re.search(r"is (0x[0-9a-f]+)", out)
        if m is None:
            raise GuestError(f"{verb} {gpa:#x}: {out.strip()}")
        return int(m[1], 16)


class Machine(QmpControl):
    """Launch QEMU with `argv`; artefacts stay in `run_dir`.

    console_log, trace_log and ram_path name the files the argv writes (the
    profile decides them); they are read, never written, from here.
    """

    def __init__(
        self,
        argv: list[str],
        run_dir: Path,
        *,
        console_log: Path,
        qmp_socket: Path,
        ram_path: Path | None = None,
        memory_mib: int = 0,
    ):
        self.argv = argv
        self.run_dir = run_dir
        self.console_log = console_log
        self.qmp_socket = qmp_socket
        self.ram_path = ram_path
        self.memory_mib = memory_mib
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self.stderr_path = run_dir / "qemu.stderr"
        self._memory: GuestMemory | None = None
        self._console_offset = 0

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> Machine:
        self.launch()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    def launch(self, timeout: float = 30) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "cmdline.txt").write_text(shlex.join(self.argv) + "\n")
        for stale in (self.qmp_socket, self.console_log):
            stale.unlink(missing_ok=True)
        self.console_log.touch()
        with open(self.stderr_path, "wb") as err:
            # Own process group: teardown can kill QEMU and anything it spawned.
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self.qmp_socket.exists():
            if self.proc.poll() is not None:
                self._raise_dead("QEMU exited during start-up")
            if time.monotonic() > deadline:
                self.shutdown()
                raise GuestError(f"QEMU did not open its QMP socket within {timeout} s\n{self._context()}")
            time.sleep(0.05)
        self.qmp = QEMUMonitorProtocol(str(self.qmp_socket))
        try:
            self.qmp.connect(negotiate=True)
        except Exception as exc:
            self.shutdown()
            raise GuestError(f"QMP connection failed: {exc}\n{self._context()}") from None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def shutdown(self, timeout: float = 10) -> None:
        """QMP quit, then SIGTERM, then SIGKILL of the process group. Idempotent."""
        if self._memory is not None:
            self._memory.close()
            self._memory = None
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None and self.qmp is not None:
            try:
                self.qmp.cmd("quit")
            except Exception:
                pass  # QEMU may be wedged or already gone: the signals below handle it
        for sig, wait in ((None, timeout), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            if sig is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.qmp is not None:
            try:
                self.qmp.close()
            except Exception:
                pass
            self.qmp = None
        self.qmp_socket.unlink(missing_ok=True)
        if self.ram_path is not None:
            # The RAM file is as large as the guest: keep artefacts, not memory images.
            self.ram_path.unlink(missing_ok=True)

    def host_view(self) -> HostView:
        pid = self.pid or 0
        return HostView(self.gpa2hva, self.gpa2hpa, lambda hva: physical_address(hva, pid), accel_of(self.argv))

    # -- guest memory ----------------------------------------------------------------
    def guest_memory(self, *, writable: bool = False) -> GuestMemory:
        """Guest-physical memory through the shared RAM file (q35 layout)."""
        if self.ram_path is None:
            raise GuestError("this VM has no shared RAM file")
        if self._memory is None or self._memory.writable != writable:
            if self._memory is not None:
                self._memory.close()
            size = self.memory_mib << 20
            self._memory = GuestMemory.from_file(self.ram_path, regions=q35_regions(size), writable=writable)
        return self._memory

    # -- console ---------------------------------------------------------------------
    def console_text(self) -> str:
        return self.console_log.read_text(errors="replace")

    def wait_for(self, pattern: str, *, idle_timeout: float = 60, total_timeout: float = 300) -> re.Match[str]:
        """Wait until `pattern` appears in the console after the previous match.

        Fails when the console is silent for `idle_timeout` s, when `total_timeout`
        s pass, or when QEMU dies — with the console tail in the error.
        """
        regex = re.compile(pattern)
        start = last_change = time.monotonic()
        size = -1
        while True:
            text = self.console_text()
            m = regex.search(text, self._console_offset)
            if m is not None:
                self._console_offset = m.end()
                return m
            now = time.monotonic()
            if len(text) != size:
                size, last_change = len(text), now
            if not self.is_running():
                self._raise_dead(f"QEMU exited while waiting for {pattern!r}")
            if now - last_change > idle_timeout:
                raise GuestError(
                    f"guest console silent for {idle_timeout:.0f} s while waiting for {pattern!r}\n"
                    + self._context()
                )
            if now - start > total_timeout:
                raise GuestError(f"{pattern!r} not seen within {total_timeout:.0f} s\n" + self._context())
            time.sleep(0.1)

    # -- errors ----------------------------------------------------------------------
    def _context(self, lines: int = 30) -> str:
        console = self.console_text().splitlines()[-lines:] if self.console_log.exists() else []
        stderr = self.stderr_path.read_text(errors="replace").strip() if self.stderr_path.exists() else ""
        return (
            f"command line: {self.run_dir / 'cmdline.txt'}\n"
            f"QEMU stderr: {stderr or '(empty)'}\n"
            f"console tail ({self.console_log}):\n  " + "\n  ".join(console or ["(empty)"])
        )

    def _raise_dead(self, what: str) -> None:
        code = self.proc.poll() if self.proc else None
        context = self._context()
        self.shutdown()
        raise GuestError(f"{what} (exit status {code})\n{context}")
