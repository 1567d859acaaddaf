"""Resolve, before building, which Debian package versions an image would contain.

The suite moves (point releases change the kernel, PoCL, Python), so the image's
cache key must include the versions, not only the recipe.  Resolving is cheap when
nothing changed: one GET of the suite's InRelease (~140 KB, ~0.15 s) whose hash of
the Packages index names a resolution already on disk.  When the index changed,
`debootstrap --print-debs` (the same resolver the build uses, ~5 s) gives the exact
package set, and the Packages index gives each one's version.

Offline (mirror unreachable), the newest resolution already on disk for the same
suite and package list is used, so a cached image keeps working without a network.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import EnvironmentBroken

SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
LEGACY_SOURCES = Path("/etc/apt/sources.list")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
INDEX = "main/binary-amd64/Packages.xz"
Progress = Callable[[str], None]


class ResolveError(EnvironmentBroken):
    pass


@dataclass(frozen=True)
class Resolution:
    suite: str
    mirror: str
    index_sha256: str  # sha256 of main/binary-amd64/Packages.xz, from the InRelease
    release_date: str  # the InRelease's Date: which snapshot of the suite this is
    versions: dict[str, str]  # every package debootstrap would install -> version
    offline: bool = False  # True: the mirror was unreachable, an older resolution was reused

    def to_json(self) -> str:
        return json.dumps(
            {
                "suite": self.suite,
                "mirror": self.mirror,
                "index_sha256": self.index_sha256,
                "release_date": self.release_date,
                "versions": self.versions,
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, *, offline: bool = False) -> Resolution:
        d = json.loads(text)
        return cls(
            d["suite"], d["mirror"], d["index_sha256"], d["release_date"], d["versions"], offline
        )


def debian_mirror(sources: Path = SOURCES, legacy: Path = LEGACY_SOURCES) -> str:
    """The host's own Debian mirror: the package source this machine is allowed to reach."""
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if "security" not in uri:  # the security archive has no trixie main suite
                        return uri.rstrip("/")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                uri = parts[2] if parts[1].startswith("[") else parts[1]
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def parse_inrelease(text: str, index: str = INDEX) -> tuple[str, str]:
    """(sha256 of `index`, Date) from an InRelease file."""
    date = ""
    in_sha256 = False
    digest = ""
    for line in text.splitlines():
        if line.startswith("Date:"):
            date = line.split(":", 1)[1].strip()
        if not line.startswith(" "):
            in_sha256 = line.startswith("SHA256:")
            continue
        parts = line.split()
        if in_sha256 and len(parts) == 3 and parts[2] == index:
            digest = parts[0]
    if not digest:
        raise ResolveError(f"the InRelease file lists no SHA256 for {index}: is the suite right?")
    return digest, date


def _order(c: str) -> int:
    # dpkg's ordering of one non-digit character: ~ sorts before everything, even
    # the end of the string; letters before other characters.
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's comparison of an upstream version or a Debian revision: alternate runs
    of non-digits (compared character by character) and digits (compared as numbers)."""
    while a or b:
        pa, a = re.match(r"(\D*)(.*)", a).groups()  # type: ignore[union-attr]
        pb, b = re.match(r"(\D*)(.*)", b).groups()  # type: ignore[union-attr]
        for i in range(max(len(pa), len(pb))):
            ca = _order(pa[i]) if i < len(pa) else 0
            cb = _order(pb[i]) if i < len(pb) else 0
            if ca != cb:
                return -1 if ca < cb else 1
        xa, a = re.match(r"(\d*)(.*)", a).groups()  # type: ignore[union-attr]
        xb, b = re.match(r"(\d*)(.*)", b).groups()  # type: ignore[union-attr]
        if int(xa or 0) != int(xb or 0):
            return -1 if int(xa or 0) < int(xb or 0) else 1
    return 0


def compare_versions(a: str, b: str) -> int:
    """Debian version comparison (epoch:upstream-revision), like `dpkg --compare-versions`."""

    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch or 0), upstream, revision

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def parse_packages(text: str, wanted: Iterable[str]) -> dict[str, str]:
    """Package -> Version for `wanted` from a Packages index.

    A suite's index may list a package twice (trixie 13.8 lists linux-libc-dev
    6.12.107-1 and 6.12.117-1); debootstrap, like apt, installs the highest.
    """
    want = set(wanted)
    found: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        m = re.match(r"Package: (\S+)\n", stanza)
        if not m or m[1] not in want:
            continue
        v = re.search(r"^Version: (\S+)$", stanza, re.M)
        if v and (m[1] not in found or compare_versions(v[1], found[m[1]]) > 0):
            found[m[1]] = v[1]
    return found


def _get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http mirror by design)
        return bytes(resp.read())


def _print_debs(suite: str, mirror: str, packages: tuple[str, ...]) -> list[str]:
    if shutil.which("debootstrap") is None:
        raise ResolveError(
            "debootstrap is not installed; run `make bootstrap` (apt-get install debootstrap)"
        )
    with tempfile.TemporaryDirectory(prefix="svmval-print-debs-") as tmp:
        proc = subprocess.run(
            [
                "debootstrap",
                "--print-debs",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                suite,
                str(Path(tmp) / "root"),
                mirror,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        tail = "\n  ".join(proc.stderr.splitlines()[-15:])
        raise ResolveError(
            f"debootstrap --print-debs {suite} from {mirror} failed (exit {proc.returncode}): a "
            f"package name in guest_image/recipe.py may not exist in {suite}; last lines:\n  {tail}"
        )
    return proc.stdout.split()


def _cache_name(suite: str, packages: tuple[str, ...]) -> str:
    key = hashlib.sha256(("\n".join((suite, *packages))).encode()).hexdigest()[:16]
    return f"{suite}-{key}"


def resolve(
    suite: str,
    packages: tuple[str, ...],
    store: Path,
    *,
    mirror: str | None = None,
    say: Progress = lambda _m: None,
) -> Resolution:
    """The versions an image built now would hold, from the mirror (or the newest known offline)."""
    mirror = mirror or debian_mirror()
    store.mkdir(parents=True, exist_ok=True)
    prefix = _cache_name(suite, packages)
    try:
        inrelease = _get(f"{mirror}/dists/{suite}/InRelease").decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        known = sorted(store.glob(f"{prefix}-*.json"), key=lambda p: p.stat().st_mtime)
        if not known:
            raise ResolveError(
                f"cannot reach the Debian mirror {mirror} ({exc}) and no earlier resolution of "
                f"{suite} is cached in {store}: connect the mirror (it comes from {SOURCES}) once"
            ) from exc
        say(f"mirror {mirror} unreachable ({exc}); using the last known {suite} package set")
        return Resolution.from_json(known[-1].read_text(), offline=True)
    index_sha, date = parse_inrelease(inrelease)
    cached = store / f"{prefix}-{index_sha[:16]}.json"
    if cached.exists():
        return Resolution.from_json(cached.read_text())

    say(f"resolving the {suite} package set (the suite's index changed: {date})")
    t0 = time.monotonic()
    names = _print_debs(suite, mirror, packages)
    raw = _get(f"{mirror}/dists/{suite}/{INDEX}", timeout=120)
    if hashlib.sha256(raw).hexdigest() != index_sha:
        raise ResolveError(
            f"{mirror}/dists/{suite}/{INDEX} does not match its InRelease "
            f"(the mirror is mid-sync?): try again in a few minutes"
        )
    versions = parse_packages(lzma.decompress(raw).decode(errors="replace"), names)
    missing = sorted(set(names) - set(versions))
    if missing:
        raise ResolveError(
            f"packages debootstrap would install are not in {suite}'s index: {missing}"
        )
    res = Resolution(suite, mirror, index_sha, date, dict(sorted(versions.items())))
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(res.to_json())
    tmp.rename(cached)
    say(f"resolved {len(versions)} packages in {time.monotonic() - t0:.1f} s")
    return res


def kernel_closure(text: str, metapackage: str) -> dict[str, str]:
    """`metapackage` (e.g. linux-image-amd64) and the linux-* packages it pins, with the
    versions a Packages index gives them (the newest of each): the kernel an image gets
    from a suite that is not its own (backports), for the image's cache key."""
    stanzas: dict[str, tuple[str, str]] = {}
    for stanza in text.split("\n\n"):
        m = re.match(r"Package: (\S+)\n", stanza)
        v = re.search(r"^Version: (\S+)$", stanza, re.M)
        if not m or not v:
            continue
        deps = re.search(r"^Depends: (.*)$", stanza, re.M)
        if m[1] not in stanzas or compare_versions(v[1], stanzas[m[1]][0]) > 0:
            stanzas[m[1]] = (v[1], deps[1] if deps else "")
    out: dict[str, str] = {}
    todo = [metapackage]
    while todo:
        name = todo.pop()
        if name in out or name not in stanzas:
            continue
        version, depends = stanzas[name]
        out[name] = version
        todo += [d.split()[0] for alt in depends.split(",") for d in [alt.split("|")[0].strip()]
                 if d.startswith("linux-")]
    if metapackage not in out:
        raise ResolveError(f"{metapackage} is not in the index; is the kernel suite right?")
    return out


def resolve_kernel(suite: str, metapackage: str, store: Path, *, mirror: str | None = None,
                   say: Progress = lambda _m: None) -> dict[str, str]:
    """The kernel packages `suite` would give the image now (cached by its index hash;
    offline, the newest known)."""
    mirror = mirror or debian_mirror()
    store.mkdir(parents=True, exist_ok=True)
    prefix = f"kernel-{suite}-{metapackage}"
    try:
        inrelease = _get(f"{mirror}/dists/{suite}/InRelease").decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        known = sorted(store.glob(f"{prefix}-*.json"), key=lambda p: p.stat().st_mtime)
        if not known:
            raise ResolveError(f"cannot reach the Debian mirror {mirror} ({exc}) for the {suite} kernel, and "
                               f"no earlier resolution is cached in {store}") from exc
        return dict(json.loads(known[-1].read_text()))
    index_sha, date = parse_inrelease(inrelease)
    cached = store / f"{prefix}-{index_sha[:16]}.json"
    if cached.exists():
        return dict(json.loads(cached.read_text()))
    say(f"resolving the kernel from {suite} ({date})")
    raw = _get(f"{mirror}/dists/{suite}/{INDEX}", timeout=120)
    if hashlib.sha256(raw).hexdigest() != index_sha:
        raise ResolveError(f"{mirror}/dists/{suite}/{INDEX} does not match its InRelease (mirror mid-sync?)")
    versions = kernel_closure(lzma.decompress(raw).decode(errors="replace"), metapackage)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(versions, indent=1, sort_keys=True))
    tmp.rename(cached)
    return versions
