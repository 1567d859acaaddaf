"""Provisioning a lab host for one run, and putting it back.

Before it changes anything a run takes the host lock (an atomic `mkdir` in the host's
workdir) and writes a journal of what it found; every change is journaled before it
is made. Restore reads only the journal, so it works on every exit path: at the end
of the run, after a failure or ctrl-C, once a dropped SSH connection is back, or from
another process (`svmval restore --host NAME`) when the run itself died.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shlex
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from harness.errors import ConfigError, EnvironmentBroken
from harness.inventory import HostSpec
from harness.remote import HostUnreachable, Target

log = logging.getLogger(__name__)

VFIO = "vfio-pci"
NR_HUGEPAGES = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
FREE_HUGEPAGES = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"


class HostLocked(EnvironmentBroken):
    pass


class DeviceBusy(EnvironmentBroken):
    pass


class RestoreIncomplete(EnvironmentBroken):
    pass


@dataclass
class QemuProcess:
    pid: int
    tag: str  # unique to the run, on QEMU's command line: only this QEMU is ever killed


@dataclass
class Journal:
    """What the host looked like before the run, and what the run has changed."""

    run_id: str
    owner: str
    started: str
    device: str | None = None
    driver: str = ""  # the device's driver before the run ("" = none)
    driver_override: str = ""
    bound_vfio: bool = False
    hugepages: int | None = None  # nr_hugepages before the run, once the run changed it
    qemu: list[QemuProcess] = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str) -> Journal:
        raw = json.loads(text)
        raw["qemu"] = [QemuProcess(**q) for q in raw.get("qemu", [])]
        return cls(**raw)


class LabHost:
    """One run's hold on one lab host: its lock, journal, device binding and hugepages."""

    def __init__(self, target: Target, host: HostSpec, journal: Journal):
        self.t = target
        self.host = host
        self.journal = journal

    # -- where things live on the host
    @staticmethod
    def lock_dir(host: HostSpec) -> str:
        return f"{host.workdir.rstrip('/')}/host.lock"

    @classmethod
    def journal_path(cls, host: HostSpec) -> str:
        return f"{cls.lock_dir(host)}/journal.json"

    def _dev(self, rel: str = "") -> str:
        assert self.journal.device is not None
        return f"/sys/bus/pci/devices/{self.journal.device}{rel}"

    # -- the lock
    @classmethod
    def acquire(cls, target: Target, host: HostSpec, run_id: str) -> LabHost:
        lock = cls.lock_dir(host)
        target.check(f"mkdir -p {shlex.quote(host.workdir)}")
        if not target.run(f"mkdir {shlex.quote(lock)}").ok:
            held = cls.read_journal(target, host)
            who = f"run {held.run_id} ({held.owner}, since {held.started})" if held else "an unknown run"
            raise HostLocked(
                f"host {host.name!r} is locked by {who}: {lock} exists. Wait for that run to end; if it "
                f"died, put the host back with `svmval restore --host {host.name}`"
            )
        owner = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"
        lab = cls(target, host, Journal(run_id, owner, datetime.now(UTC).isoformat(timespec="seconds")))
        lab.save()
        return lab

    @classmethod
    def read_journal(cls, target: Target, host: HostSpec) -> Journal | None:
        text = target.read_text(cls.journal_path(host))
        return Journal.from_json(text) if text else None

    def save(self) -> None:
        path = self.journal_path(self.host)
        text = json.dumps(asdict(self.journal), indent=1)
        self.t.check(f"printf %s {shlex.quote(text)} > {shlex.quote(path)}.tmp && mv {shlex.quote(path)}.tmp "
                     f"{shlex.quote(path)}")

    # -- hugepages
    def reserve_hugepages(self, count: int) -> None:
        nr = int((self.t.read_text(NR_HUGEPAGES) or "0").strip())
        free = int((self.t.read_text(FREE_HUGEPAGES) or "0").strip())
        if free >= count:
            return
        want = nr + count - free
        self.journal.hugepages = nr
        self.save()
        self.t.write_text(NR_HUGEPAGES, f"{want}\n")
        got = int((self.t.read_text(NR_HUGEPAGES) or "0").strip())
        if got < want:
            raise EnvironmentBroken(
                f"host {self.host.name!r}: only {got} of {want} 2 MiB hugepages could be reserved; free "
                f"memory on the host or reserve them at boot (hugepages={want} on its kernel command line)"
            )

    # -- the device
    def driver(self) -> str:
        link = self.t.readlink(f"/sys/bus/pci/devices/{self.journal.device}/driver")
        return link.rsplit("/", 1)[-1] if link else ""

    def bind_vfio(self, bdf: str) -> None:
        self.journal.device = bdf
        if not self.t.exists(f"/sys/bus/pci/devices/{bdf}"):
            raise ConfigError(f"host {self.host.name!r} has no PCI device {bdf} (field 'device'); check `lspci -D`")
        driver = self.driver()
        if driver == VFIO:
            raise DeviceBusy(
                f"host {self.host.name!r}: {bdf} is already bound to {VFIO}, and not by svmval: another VM "
                f"or user may own it. Check `lsof /dev/vfio/*`; if it is free, give it back to its driver "
                f"(echo {bdf} > /sys/bus/pci/drivers/{VFIO}/unbind; echo {bdf} > /sys/bus/pci/drivers_probe)"
            )
        override = (self.t.read_text(self._dev("/driver_override")) or "").strip()
        self.journal.driver = driver
        self.journal.driver_override = "" if override == "(null)" else override
        self.journal.bound_vfio = True
        self.save()
        self.t.write_text(self._dev("/driver_override"), VFIO)
        if driver:
            self.t.write_text(f"/sys/bus/pci/drivers/{driver}/unbind", bdf)
        self.t.write_text("/sys/bus/pci/drivers_probe", bdf)
        self._wait_driver(VFIO, f"is the vfio-pci module loaded on {self.host.name!r} (modprobe vfio-pci)?")

    def _wait_driver(self, want: str, hint: str, within: float = 10) -> None:
        deadline = time.monotonic() + within
        while (now := self.driver()) != want:
            if time.monotonic() > deadline:
                raise EnvironmentBroken(
                    f"host {self.host.name!r}: {self.journal.device} is bound to {now or 'no driver'}, "
                    f"not {want or 'no driver'}, after {within:.0f} s; {hint}"
                )
            time.sleep(0.2)

    # -- QEMU
    def note_qemu(self, pid: int, tag: str) -> None:
        """Journal a QEMU of this run: pid 0 before it is started, its pid once it is."""
        self.journal.qemu = [q for q in self.journal.qemu if q.tag != tag]
        self.journal.qemu.append(QemuProcess(pid, tag))
        self.save()

    def _pids(self, q: QemuProcess) -> list[QemuProcess]:
        if q.pid:
            return [q]
        found = self.t.run(f"pgrep -f -- {shlex.quote(q.tag)}").stdout.split()
        return [QemuProcess(int(p), q.tag) for p in found]

    def _ours(self, q: QemuProcess) -> bool:
        # The real /proc: QEMU runs on the host, whatever tree its hardware is read from.
        r = self.t.run(f"tr '\\0' ' ' < /proc/{q.pid}/cmdline")
        return r.ok and q.tag in r.stdout

    def stop_qemu(self, q: QemuProcess, within: float = 15) -> None:
        for sig, wait in (("TERM", within), ("KILL", 5)):
            if not self._ours(q):
                return
            self.t.run(f"kill -{sig} {q.pid}")
            deadline = time.monotonic() + wait
            while self._ours(q) and time.monotonic() < deadline:
                time.sleep(0.2)
        if self._ours(q):
            raise EnvironmentBroken(f"QEMU pid {q.pid} on {self.host.name!r} survived SIGKILL")

    # -- restore
    def restore(self) -> list[str]:
        """Undo what the journal says the run did; what was done, in order. Keeps the
        lock and journal (and raises) when anything could not be put back."""
        done, failed = [], []
        j = self.journal
        for q in list(j.qemu):
            try:
                for p in self._pids(q):
                    if self._ours(p):
                        self.stop_qemu(p)
                        done.append(f"stopped QEMU pid {p.pid}")
                j.qemu.remove(q)
            except EnvironmentBroken as exc:
                failed.append(str(exc))
        if j.bound_vfio and not failed:  # the device stays with vfio while its QEMU may live
            try:
                self._restore_device()
                done.append(f"{j.device} back to {j.driver or 'no driver'}")
                j.bound_vfio = False
            except EnvironmentBroken as exc:
                failed.append(str(exc))
        if j.hugepages is not None:
            try:
                self.t.write_text(NR_HUGEPAGES, f"{j.hugepages}\n")
                done.append(f"nr_hugepages back to {j.hugepages}")
                j.hugepages = None
            except EnvironmentBroken as exc:
                failed.append(str(exc))
        if failed:
            self.save()
            raise RestoreIncomplete(
                f"host {self.host.name!r} is not fully restored: {'; '.join(failed)}. The lock and journal "
                f"({self.journal_path(self.host)}) are kept; fix the cause, then `svmval restore --host "
                f"{self.host.name}`"
            )
        self.t.check(f"rm -rf {shlex.quote(self.lock_dir(self.host))}")
        done.append("lock released")
        return done

    def _restore_device(self) -> None:
        j = self.journal
        bdf = j.device
        assert bdf is not None
        if self.driver() == VFIO:
            self.t.write_text(f"/sys/bus/pci/drivers/{VFIO}/unbind", bdf)
        # An empty write clears driver_override; the newline makes the shell write at all.
        self.t.write_text(self._dev("/driver_override"), f"{j.driver_override}\n")
        if j.driver:
            self.t.write_text("/sys/bus/pci/drivers_probe", bdf)
        self._wait_driver(j.driver, f"bind it by hand: echo {bdf} > /sys/bus/pci/drivers/{j.driver}/bind")


def restore_host(target: Target, host: HostSpec) -> list[str]:
    """`svmval restore`: put a host back from the journal a dead run left there."""
    journal = LabHost.read_journal(target, host)
    if journal is None:
        if target.exists(LabHost.lock_dir(host)):
            target.check(f"rm -rf {shlex.quote(LabHost.lock_dir(host))}")
            return ["removed a lock without a journal (the run died before changing anything)"]
        return []
    return LabHost(target, host, journal).restore()


@contextmanager
def provisioned(
    target: Target, host: HostSpec, run_id: str, say: Callable[[str], None] = lambda _m: None
) -> Iterator[LabHost]:
    """Lock the host, reserve hugepages, hand the device to vfio-pci; restore on the way out,
    whatever the way out is (reconnecting first when the connection dropped)."""
    lab = LabHost.acquire(target, host, run_id)
    say(f"{host.name}: locked ({LabHost.lock_dir(host)})")
    try:
        if host.hugepages:
            lab.reserve_hugepages(host.hugepages)
        if host.device:
            lab.bind_vfio(host.device)
            say(f"{host.name}: {host.device} on {VFIO} (was {lab.journal.driver or 'unbound'})")
        yield lab
    except BaseException as exc:
        try:
            _restore_reconnecting(lab, say)
        except Exception as rexc:
            exc.add_note(f"and restore failed: {rexc}")
        raise
    else:
        _restore_reconnecting(lab, say)


def _restore_reconnecting(lab: LabHost, say: Callable[[str], None]) -> None:
    try:
        done = lab.restore()
    except HostUnreachable:
        say(f"{lab.host.name}: connection lost; reconnecting to restore the host")
        lab.t.reconnect(within=60)
        done = lab.restore()
    say(f"{lab.host.name}: restored ({', '.join(done)})")
