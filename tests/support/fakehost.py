"""A lab host's /sys, /proc and /dev, built from a captured real host (tests/fixtures/hosts),
with the one piece of kernel behaviour provisioning relies on: PCI driver binding.

Hardware facts (CPU, DMAR CAP/ECAP, the device's lspci -vvv, its IOMMU group) come from
the fixture, whose SOURCES.md names where each was published. What the kernel does
when a BDF is written to a driver's bind/unbind file or to drivers_probe is emulated:
those files are FIFOs served by a thread that moves the device's `driver` symlink, as
the kernel would (honouring driver_override). Everything else is a plain file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hosts"
VFIO = "vfio-pci"


@dataclass
class FakeHost:
    root: Path  # the sysroot
    bin: Path  # put first on the sshd's PATH: lspci answers from the fixture
    fixture: dict[str, Any]
    bdf: str

    @property
    def device(self) -> Path:
        return self.root / "sys/bus/pci/devices" / self.bdf

    def driver(self) -> str:
        link = self.device / "driver"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else ""

    def driver_override(self) -> str:
        return (self.device / "driver_override").read_text().strip()

    @property
    def nr_hugepages(self) -> int:
        return int((self.root / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text())

    def bind(self, driver: str) -> None:
        """Put the device on `driver` (a test's starting state, e.g. someone else's vfio-pci)."""
        (self.root / "sys/bus/pci/drivers" / driver).mkdir(parents=True, exist_ok=True)
        link = self.device / "driver"
        link.unlink(missing_ok=True)
        link.symlink_to(f"../../../../bus/pci/drivers/{driver}")


def load_fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name / "host.json").read_text())
    data["_dir"] = str(FIXTURES / name)
    return data


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def build_tree(fx: dict[str, Any], root: Path) -> FakeHost:
    # A null in a fixture is a value nobody published: the file is left out (or empty).
    cpu = fx["cpu"]
    model = f"model name\t: {cpu['model_name']}\n" if cpu.get("model_name") else ""
    _write(root / "proc/cpuinfo", f"processor\t: 0\nvendor_id\t: {cpu['vendor_id']}\n{model}")
    _write(root / "proc/cmdline", (fx.get("cmdline") or "") + "\n")
    # Memory is this machine's: the fixtures record none, and provisioning only reads it.
    shutil.copy("/proc/meminfo", root / "proc/meminfo")
    for unit in fx["dmar_units"]:
        base = root / "sys/class/iommu" / unit["name"] / "intel-iommu"
        # Linux prints them as %llx.
        _write(base / "cap", f"{int(unit['cap'], 16):x}\n")
        _write(base / "ecap", f"{int(unit['ecap'], 16):x}\n")
    dev = fx["device"]
    bdf = dev["bdf"]
    d = root / "sys/bus/pci/devices" / bdf
    for attr in ("vendor", "device", "class"):
        if dev.get(attr):
            _write(d / attr, f"{dev[attr]}\n")
    _write(d / "driver_override", "(null)\n")
    group = (fx.get("iommu_group") or {}).get("number")
    if group is not None:
        gdir = root / "sys/kernel/iommu_groups" / str(group) / "devices"
        gdir.mkdir(parents=True)
        for member in fx["iommu_group"]["members"]:
            (gdir / member).symlink_to(f"../../../../bus/pci/devices/{member}")
        (d / "iommu_group").symlink_to(f"../../../../kernel/iommu_groups/{group}")
    hp = root / "sys/kernel/mm/hugepages/hugepages-2048kB"
    _write(hp / "nr_hugepages", "0\n")  # a host that reserved none at boot: the run reserves them
    _write(hp / "free_hugepages", "0\n")
    for node in ("dev/iommu", "dev/vfio/vfio"):
        _write(root / node, "")
    (root / "dev/vfio/devices").mkdir(parents=True)
    for drv in {dev.get("driver") or "", VFIO} - {""}:
        (root / "sys/bus/pci/drivers" / drv).mkdir(parents=True, exist_ok=True)
    fake = FakeHost(root, root / "bin", fx, bdf)
    if dev.get("driver"):
        fake.bind(dev["driver"])
    listing = f"cat {Path(fx['_dir']) / dev['lspci_vvv']}" if dev.get("lspci_vvv") else "true  # none published"
    _write(fake.bin / "lspci", f"#!/bin/sh\n# lspci -vvv -s BDF, as the captured host printed it\n{listing}\n")
    (fake.bin / "lspci").chmod(0o755)
    return fake


class _Kernel:
    """Serves bind/unbind/drivers_probe FIFOs: a write moves the driver symlink."""

    def __init__(self, fake: FakeHost):
        self.fake = fake
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.fifos: list[Path] = []
        drivers = fake.root / "sys/bus/pci/drivers"
        for drv in sorted(p.name for p in drivers.iterdir()):
            for op in ("bind", "unbind"):
                self._serve(drivers / drv / op, lambda bdf, d=drv, o=op: self._op(o, d, bdf))
        self._serve(fake.root / "sys/bus/pci/drivers_probe", lambda bdf: self._probe(bdf))

    def _serve(self, path: Path, handle: Any) -> None:
        os.mkfifo(path)
        self.fifos.append(path)

        def loop() -> None:
            while not self.stop.is_set():
                with open(path) as f:  # blocks until a writer opens it
                    text = f.read().strip()
                if text and not self.stop.is_set():
                    handle(text)

        t = threading.Thread(target=loop, daemon=True, name=f"fake-kernel {path.name}")
        t.start()
        self.threads.append(t)

    def _op(self, op: str, driver: str, bdf: str) -> None:
        if bdf != self.fake.bdf:
            return  # the kernel answers ENODEV; the caller sees the link unchanged
        current = self.fake.driver()
        if op == "unbind" and current == driver:
            (self.fake.device / "driver").unlink()
        elif op == "bind" and not current and self.fake.driver_override() in ("(null)", "", driver):
            self.fake.bind(driver)

    def _probe(self, bdf: str) -> None:
        if bdf != self.fake.bdf or self.fake.driver():
            return
        override = self.fake.driver_override()
        native = self.fake.fixture["device"].get("driver") or ""
        target = override if override not in ("(null)", "") else native
        if target:
            self.fake.bind(target)

    def close(self) -> None:
        self.stop.set()
        for path in self.fifos:
            try:  # wake the reader so its thread sees `stop`
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
        for t in self.threads:
            t.join(2)


@contextmanager
def fake_host(name: str, root: Path) -> Iterator[FakeHost]:
    fake = build_tree(load_fixture(name), root)
    kernel = _Kernel(fake)
    try:
        yield fake
    finally:
        kernel.close()


def is_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(path.stat().st_mode)
