"""Lab inventory: which hosts exist and how to reach and use them.

The inventory is a TOML file (default `labs.toml` at the repo root, or
`--inventory` / `SVMVAL_INVENTORY`).  A built-in `local` host always exists: it
is the local lab (QEMU TCG + emulated VT-d + PoCL) and needs no entry.

Validation reports every mistake at once, each naming file, host and field,
because a nightly job that fails on the first of three typos wastes two nights.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.paths import REPO_ROOT

DEFAULT_INVENTORY = REPO_ROOT / "labs.toml"
LOCAL = "local"

# PCI address as sysfs and lspci print it: domain:bus:device.function.
_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_.:\-\[\]]+$")


class HostKind(StrEnum):
    LOCAL = "local"  # this machine, QEMU's emulated VT-d, no assigned device
    SSH = "ssh"  # a lab host reached over SSH


class Nesting(StrEnum):
    IOMMUFD_FLTS = "iommufd-flts"  # host IOMMU nested, guest first stage via iommufd + x-flts
    NONE = "none"  # emulated vIOMMU only (the local lab)


class KnownHostsPolicy(StrEnum):
    STRICT = "strict"  # the key must already be in known_hosts (the default)
    ACCEPT_NEW_INSECURE = "accept-new-insecure"  # explicit, logged opt-out for throwaway labs


@dataclass(frozen=True)
class HostSpec:
    name: str
    kind: HostKind
    address: str = "127.0.0.1"
    port: int = 22
    user: str = "root"
    key_file: Path | None = None
    known_hosts: Path | None = None
    known_hosts_policy: KnownHostsPolicy = KnownHostsPolicy.STRICT
    device: str | None = None  # PCI BDF of the SVM device to assign
    device_vendor: str | None = None  # expected OpenCL vendor substring, e.g. "Intel"
    icd: str | None = None  # Debian ICD package the guest needs, e.g. intel-opencl-icd
    qemu: str = "qemu-system-x86_64"  # lab: the host's binary; local: also "svmval", "sid" or "newest"
    guest_memory_mib: int = 2048
    guest_cpus: int = 2
    hugepages: int = 0  # 2 MiB pages to reserve for guest RAM
    hugepages_mount: str = "/dev/hugepages"  # the host's hugetlbfs mount (lab-nested guest RAM)
    nesting: Nesting = Nesting.NONE
    workdir: str = "/var/tmp/svmval"  # remote directory for images and run files
    sysroot: str = ""  # read /sys, /proc and /dev under this directory (captured host trees)
    source: Path | None = None  # the inventory file it came from

    @property
    def is_local(self) -> bool:
        return self.kind is HostKind.LOCAL

    def usable_problems(self) -> list[str]:
        """What stops this host from being used now (files that must exist)."""
        problems = []
        if self.key_file is not None and not self.key_file.exists():
            problems.append(
                f"field 'key_file': file {self.key_file} does not exist; create the key "
                f"(ssh-keygen -t ed25519 -f {self.key_file}) or fix the path"
            )
        if (
            self.kind is HostKind.SSH
            and self.known_hosts_policy is KnownHostsPolicy.STRICT
            and self.known_hosts is not None
            and not self.known_hosts.exists()
        ):
            problems.append(
                f"field 'known_hosts': file {self.known_hosts} does not exist; record the "
                f"host key (ssh-keyscan -p {self.port} {self.address} > {self.known_hosts}) "
                f"or fix the path"
            )
        return problems

    @property
    def has_hardware(self) -> bool:
        """A PASID-capable device is assigned: hardware tests can run."""
        return self.device is not None


# The local lab runs svmval's own QEMU (Debian's source + the svmval-sva PASID/ATS/PRI
# device, host_setup/qemu_build), so its checks judge real page requests and ATS.
LOCAL_HOST = HostSpec(name=LOCAL, kind=HostKind.LOCAL, qemu="svmval", guest_memory_mib=2048, guest_cpus=2)

# field name -> (python type accepted in TOML, required for ssh hosts)
_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "kind": (str, False),
    "address": (str, True),
    "port": (int, False),
    "user": (str, False),
    "key_file": (str, True),
    "known_hosts": (str, False),
    "known_hosts_policy": (str, False),
    "device": (str, False),
    "device_vendor": (str, False),
    "icd": (str, False),
    "qemu": (str, False),
    "guest_memory_mib": (int, False),
    "guest_cpus": (int, False),
    "hugepages": (int, False),
    "hugepages_mount": (str, False),
    "nesting": (str, False),
    "workdir": (str, False),
    "sysroot": (str, False),
}


class InventoryError(ConfigError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid inventory:\n  " + "\n  ".join(problems))


class UnknownHostError(ConfigError):
    def __init__(self, name: str, known: list[str], source: Path | None):
        self.name = name
        self.known = known
        where = f" in {source}" if source else ""
        super().__init__(
            f"unknown host {name!r}{where}; known hosts: {', '.join(known)}. "
            f"Add a [hosts.{name}] table to the inventory or pick a known name."
        )


@dataclass(frozen=True)
class Inventory:
    hosts: dict[str, HostSpec]
    source: Path | None = None
    problems: tuple[str, ...] = field(default=())

    def get(self, name: str) -> HostSpec:
        """The host to use; files it needs are checked here, not at load time, so a
        missing key of one lab host does not stop runs on the others."""
        try:
            spec = self.hosts[name]
        except KeyError:
            raise UnknownHostError(name, sorted(self.hosts), self.source) from None
        problems = spec.usable_problems()
        if problems:
            raise InventoryError([f"{spec.source}: host {name!r}: {p}" for p in problems])
        return spec

    def names(self) -> list[str]:
        return sorted(self.hosts)


def inventory_path(explicit: str | Path | None = None) -> Path | None:
    """The inventory file to use: explicit > $SVMVAL_INVENTORY > labs.toml (if present)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("SVMVAL_INVENTORY")
    if env:
        return Path(env)
    return DEFAULT_INVENTORY if DEFAULT_INVENTORY.exists() else None


def load_inventory(path: str | Path | None = None) -> Inventory:
    """Load and validate an inventory; the built-in `local` host is always present."""
    resolved = inventory_path(path)
    if resolved is None:
        return Inventory(hosts={LOCAL: LOCAL_HOST})
    if not resolved.exists():
        raise ConfigError(
            f"inventory file {resolved} does not exist; create it (see labs.toml in the "
            f"repository for an example) or drop --inventory/SVMVAL_INVENTORY"
        )
    try:
        data = tomllib.loads(resolved.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError([f"{resolved}: not valid TOML: {exc}"]) from None
    return parse_inventory(data, resolved)


def parse_inventory(data: dict[str, Any], source: Path) -> Inventory:
    problems: list[str] = []
    unknown_top = set(data) - {"hosts"}
    for key in sorted(unknown_top):
        problems.append(f"{source}: unknown top-level key {key!r} (only [hosts.NAME] tables)")
    tables = data.get("hosts", {})
    if not isinstance(tables, dict):
        raise InventoryError([f"{source}: 'hosts' must be a table of [hosts.NAME] tables"])

    hosts: dict[str, HostSpec] = {LOCAL: LOCAL_HOST}
    seen_lower: dict[str, str] = {}
    for name, table in tables.items():
        where = f"{source}: host {name!r}"
        if name.lower() in seen_lower:
            # TOML itself rejects exact duplicates; case-only twins are a mistake too.
            problems.append(f"{where}: duplicate host (same name as {seen_lower[name.lower()]!r})")
            continue
        seen_lower[name.lower()] = name
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table")
            continue
        spec, host_problems = _parse_host(name, table, source)
        problems.extend(f"{where}: {p}" for p in host_problems)
        if name == LOCAL:
            if spec is not None and spec.kind is not HostKind.LOCAL:
                problems.append(f"{where}: 'local' is the built-in local lab; give the host another name")
                continue
        if spec is not None:
            hosts[name] = spec
    if problems:
        raise InventoryError(problems)
    return Inventory(hosts=hosts, source=source)


def _parse_host(name: str, table: dict[str, Any], source: Path) -> tuple[HostSpec | None, list[str]]:
    problems: list[str] = []
    for key in sorted(set(table) - set(_FIELDS)):
        problems.append(f"unknown field {key!r} (known: {', '.join(sorted(_FIELDS))})")
    for key, (typ, _) in _FIELDS.items():
        if key in table and (not isinstance(table[key], typ) or isinstance(table[key], bool)):
            problems.append(f"field {key!r} must be a {getattr(typ, '__name__', typ)}, got {table[key]!r}")
    if problems:
        return None, problems

    try:
        kind = HostKind(table.get("kind", "ssh"))
    except ValueError:
        return None, [f"field 'kind' must be one of {[k.value for k in HostKind]}, got {table['kind']!r}"]

    if kind is HostKind.SSH:
        for key, (_, required) in _FIELDS.items():
            if required and key not in table:
                problems.append(f"missing field {key!r} (needed to reach an ssh host)")
    base = source.parent

    def path_field(key: str) -> Path | None:
        if key not in table:
            return None
        p = Path(os.path.expanduser(table[key]))
        return p if p.is_absolute() else base / p

    key_file = path_field("key_file")
    known_hosts = path_field("known_hosts")

    address = table.get("address", "127.0.0.1")
    if not _HOSTNAME.match(address):
        problems.append(f"field 'address': {address!r} is not a host name or IP address")
    port = table.get("port", 22)
    if not 1 <= port <= 65535:
        problems.append(f"field 'port': {port} is outside 1..65535")

    device = table.get("device")
    if device is not None:
        device = device.lower()
        if not _BDF.match(device):
            problems.append(
                f"field 'device': {table['device']!r} is not a PCI address; "
                f"write it as lspci -D prints it, e.g. 0000:3b:00.0"
            )
    try:
        policy = KnownHostsPolicy(table.get("known_hosts_policy", "strict"))
    except ValueError:
        problems.append(
            f"field 'known_hosts_policy' must be one of {[p.value for p in KnownHostsPolicy]}, "
            f"got {table['known_hosts_policy']!r}"
        )
        policy = KnownHostsPolicy.STRICT
    try:
        nesting = Nesting(table.get("nesting", "iommufd-flts" if device else "none"))
    except ValueError:
        problems.append(f"field 'nesting' must be one of {[n.value for n in Nesting]}, got {table['nesting']!r}")
        nesting = Nesting.NONE
    if nesting is Nesting.IOMMUFD_FLTS and device is None:
        problems.append("field 'nesting' = 'iommufd-flts' needs a 'device' to assign")

    mem = table.get("guest_memory_mib", 2048)
    if mem < 512:
        problems.append(f"field 'guest_memory_mib': {mem} MiB is too small for the guest (>= 512)")
    cpus = table.get("guest_cpus", 2)
    if not 1 <= cpus <= 256:
        problems.append(f"field 'guest_cpus': {cpus} is outside 1..256")
    hugepages = table.get("hugepages", 0)
    if hugepages < 0:
        problems.append(f"field 'hugepages': {hugepages} must be >= 0")
    elif hugepages and hugepages * 2 < mem:
        problems.append(
            f"field 'hugepages': {hugepages} x 2 MiB cannot back {mem} MiB of guest RAM; "
            f"use at least {(mem + 1) // 2}"
        )
    if problems:
        return None, problems
    return (
        HostSpec(
            name=name,
            kind=kind,
            address=address,
            port=port,
            user=table.get("user", "root"),
            key_file=key_file,
            known_hosts=known_hosts,
            known_hosts_policy=policy,
            device=device,
            device_vendor=table.get("device_vendor"),
            icd=table.get("icd"),
            qemu=table.get("qemu", "svmval" if kind is HostKind.LOCAL else "qemu-system-x86_64"),
            guest_memory_mib=mem,
            guest_cpus=cpus,
            hugepages=hugepages,
            hugepages_mount=table.get("hugepages_mount", "/dev/hugepages"),
            nesting=nesting,
            workdir=table.get("workdir", "/var/tmp/svmval"),
            sysroot=table.get("sysroot", ""),
            source=source,
        ),
        [],
    )
