"""Debian's `qemu` source package, fetched with apt into the cache and verified.

`apt-get source --download-only` runs with a private apt state, cache and sources
list under the cache (a `deb-src` line for sid on the machine's own mirror), so the
machine's apt set-up is never touched. sid's Sources may list versions whose files
the mirror does not (yet, or any more) serve (11.1.x answered 404 on 2026-12-01):
the newest version that downloads wins. The .dsc is checked against the sha256
Sources gives, every other file against the sha256 in the .dsc, and the result is
cached under the .dsc's sha256. `dpkg-source -x` unpacks it with Debian's patches.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from guest_image.resolve import compare_versions, debian_mirror
from harness.paths import cache_dir
from host_setup.qemu_build.errors import MissingBuildPackage, SourceUnavailable

PACKAGE = "qemu"
SUITE = "sid"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
Say = Callable[[str], None]


def build_root() -> Path:
    path = cache_dir() / "qemu-build"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class SourceEntry:
    """One `Package: qemu` stanza of a Sources index."""

    version: str
    directory: str
    files: dict[str, tuple[str, int]]  # name -> (sha256, size)

    @property
    def dsc(self) -> str:
        return next(name for name in self.files if name.endswith(".dsc"))

    @property
    def dsc_sha256(self) -> str:
        return self.files[self.dsc][0]


@dataclass(frozen=True)
class FetchedSource:
    """A verified source package in the cache: the .dsc and the files it lists."""

    package: str
    version: str
    dsc_sha256: str
    dir: Path
    dsc: Path

    def to_json(self) -> str:
        return json.dumps({"package": self.package, "version": self.version, "dsc_sha256": self.dsc_sha256,
                           "dsc": self.dsc.name}, indent=1, sort_keys=True)


def _checksum_lines(text: str, field: str) -> dict[str, tuple[str, int]]:
    """The `sha size name` lines of a deb822 multi-line field (Checksums-Sha256)."""
    out: dict[str, tuple[str, int]] = {}
    inside = False
    for line in text.splitlines():
        if not line.startswith((" ", "\t")):
            inside = line.startswith(f"{field}:")
            continue
        parts = line.split()
        if inside and len(parts) == 3:
            out[parts[2]] = (parts[0], int(parts[1]))
    return out


def parse_sources(text: str, package: str = PACKAGE) -> list[SourceEntry]:
    """Every stanza of `package` in a Sources index, newest version first."""
    entries: list[SourceEntry] = []
    for stanza in re.split(r"\n\s*\n", text):
        if not re.search(rf"^Package: {re.escape(package)}$", stanza, re.M):
            continue
        version = re.search(r"^Version: (\S+)$", stanza, re.M)
        directory = re.search(r"^Directory: (\S+)$", stanza, re.M)
        files = _checksum_lines(stanza, "Checksums-Sha256")
        if version and directory and any(n.endswith(".dsc") for n in files):
            entries.append(SourceEntry(version[1], directory[1], files))
    def newest_first(a: SourceEntry, b: SourceEntry) -> int:
        return compare_versions(b.version, a.version)

    return sorted(entries, key=functools.cmp_to_key(newest_first))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_files(directory: Path, dsc: Path, dsc_sha256: str, package: str, version: str) -> None:
    """The .dsc must hash to what Sources says, every file it lists to what it says."""
    fix = "delete the folder and fetch again (`svmval qemu build --force`)"
    got = sha256_file(dsc)
    if got != dsc_sha256:
        raise SourceUnavailable(f"{package} {version}: {dsc.name} has sha256 {got}, Sources says {dsc_sha256}; {fix}")
    listed = _checksum_lines(dsc.read_text(errors="replace"), "Checksums-Sha256")
    if not listed:
        raise SourceUnavailable(f"{package} {version}: {dsc.name} lists no Checksums-Sha256; {fix}")
    for name, (sha, size) in listed.items():
        path = directory / name
        if not path.exists():
            raise SourceUnavailable(f"{package} {version}: {name} (listed in {dsc.name}) is missing in {directory}")
        if path.stat().st_size != size or sha256_file(path) != sha:
            raise SourceUnavailable(
                f"{package} {version}: {path} does not match the sha256 {sha} (size {size}) in {dsc.name}; {fix}"
            )


class AptSources:
    """A private apt (state, cache, sources list) for `deb-src <mirror> sid main`."""

    def __init__(self, root: Path, mirror: str | None = None, suite: str = SUITE):
        self.root = root
        self.mirror = mirror or debian_mirror()
        self.suite = suite
        for sub in ("etc/sources.list.d", "etc/preferences.d", "state/lists/partial", "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        signed = f" [signed-by={KEYRING}]" if KEYRING.exists() else ""
        (root / "etc/sources.list").write_text(f"deb-src{signed} {self.mirror} {suite} main\n")

    def apt(self, *args: str, cwd: Path | None = None, tool: str = "apt-get") -> subprocess.CompletedProcess[str]:
        if shutil.which(tool) is None:
            raise MissingBuildPackage(["apt"], "this build fetches Debian's source package with apt-get")
        opts = [
            f"Dir::Etc::SourceList={self.root}/etc/sources.list",
            f"Dir::Etc::SourceParts={self.root}/etc/sources.list.d",
            f"Dir::Etc::Preferences={self.root}/etc/preferences",
            f"Dir::Etc::PreferencesParts={self.root}/etc/preferences.d",
            f"Dir::State={self.root}/state",
            f"Dir::Cache={self.root}/cache",
            "Debug::NoLocking=1",
            "Acquire::Languages=none",
            "APT::Sandbox::User=root",
        ]
        argv = [tool, "-q"] + [x for o in opts for x in ("-o", o)] + list(args)
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)

    def apt_cache(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.apt(*args, tool="apt-cache")

    def update(self) -> None:
        proc = self.apt("update")
        if proc.returncode != 0:
            raise SourceUnavailable(
                f"apt-get update of `deb-src {self.mirror} {self.suite} main` failed: "
                f"{proc.stderr.strip()[-400:]}; check that the mirror is reachable"
            )

    def entries(self, package: str = PACKAGE) -> list[SourceEntry]:
        """The stanzas of `package` (apt-cache reads the index in whatever compression apt stored it)."""
        proc = self.apt_cache("showsrc", "--only-source", package)
        return parse_sources(proc.stdout, package) if proc.returncode == 0 else []


def selected_file() -> Path:
    return build_root() / "source" / "selected.json"


def cached_source() -> FetchedSource | None:
    """The source last fetched (pinned by its .dsc sha256), if still whole in the cache."""
    sel = selected_file()
    if not sel.exists():
        return None
    d = json.loads(sel.read_text())
    directory = build_root() / "source" / d["dsc_sha256"]
    dsc = directory / d["dsc"]
    if not dsc.exists():
        return None
    return FetchedSource(d["package"], d["version"], d["dsc_sha256"], directory, dsc)


def fetch_source(say: Say = lambda _m: None, *, refresh: bool = False, package: str = PACKAGE) -> FetchedSource:
    """The newest `qemu` source that downloads and verifies (the cached one unless `refresh`)."""
    if not refresh and (cached := cached_source()) is not None:
        return cached
    for tool in ("dpkg-source",):
        if shutil.which(tool) is None:
            raise MissingBuildPackage(["dpkg-dev"], "apt-get install dpkg-dev (or run `make bootstrap`)")
    apt = AptSources(build_root() / "apt")
    say(f"apt-get update: deb-src {apt.mirror} {apt.suite} main")
    apt.update()
    entries = apt.entries(package)
    if not entries:
        raise SourceUnavailable(f"{apt.suite}'s Sources on {apt.mirror} lists no source package {package!r}")
    failures: list[str] = []
    for entry in entries:
        final = build_root() / "source" / entry.dsc_sha256
        if (final / entry.dsc).exists():
            try:
                verify_files(final, final / entry.dsc, entry.dsc_sha256, package, entry.version)
                return _select(package, entry, final)
            except SourceUnavailable:
                shutil.rmtree(final)
        say(f"apt-get source --download-only {package}={entry.version}")
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="fetch-", dir=final.parent))
        proc = apt.apt("source", "--download-only", f"{package}={entry.version}", cwd=work)
        if proc.returncode != 0:
            reason = next((ln for ln in proc.stderr.splitlines() if ln.startswith("E:")), proc.stderr.strip()[-200:])
            failures.append(f"{entry.version}: {reason}")
            shutil.rmtree(work, ignore_errors=True)
            continue
        try:
            verify_files(work, work / entry.dsc, entry.dsc_sha256, package, entry.version)
        except SourceUnavailable as exc:
            failures.append(f"{entry.version}: {exc}")
            shutil.rmtree(work, ignore_errors=True)
            continue
        work.chmod(0o755)
        work.rename(final)
        return _select(package, entry, final)
    raise SourceUnavailable(
        f"no version of Debian's source package {package!r} in {apt.suite} ({apt.mirror}) could be fetched:\n  "
        + "\n  ".join(failures)
        + "\nfix: check the mirror (or set another in /etc/apt/sources.list.d/debian.sources), then retry"
    )


def _select(package: str, entry: SourceEntry, directory: Path) -> FetchedSource:
    src = FetchedSource(package, entry.version, entry.dsc_sha256, directory, directory / entry.dsc)
    tmp = selected_file().with_suffix(".tmp")
    tmp.write_text(src.to_json())
    tmp.rename(selected_file())
    return src


def unpack(src: FetchedSource, dest: Path, log: Path) -> None:
    """`dpkg-source -x` (Debian's patches applied) of `src` into `dest` (must not exist)."""
    with open(log, "ab") as fh:
        proc = subprocess.run(["dpkg-source", "--no-check", "-x", str(src.dsc), str(dest)],
                              stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise SourceUnavailable(f"dpkg-source -x of {src.package} {src.version} failed (log: {log})")
