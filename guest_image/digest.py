"""The image's cache key: what decides its contents, hashed.

Inputs: the builder's own source files, guest files (guest_image/files/*) and the
guest driver's sources (guest_image/driver/*), the
suite, the requested package list, and every resolved package version.  Not
inputs: the mirror URL (any mirror serves the same versions), cli.py, README.md,
tests.  Generated keys (SSH) are per build and so not part of the key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"
SCHEMA = "svmval-guest-image/1"

# The modules whose code shapes the image; a change to any of them is a new image.
BUILD_MODULES = ("recipe.py", "build.py", "rootfs.py", "initramfs.py", "digest.py", "driver.py")


def build_sources(base: Path = HERE) -> list[Path]:
    """The builder, the guest's files and the guest driver's sources (driver/)."""
    files, driver = base / "files", base / "driver"
    return [base / name for name in BUILD_MODULES] + sorted(
        p for d in (files, driver) for p in d.iterdir() if p.is_file()
    )


def compute_digest(
    sources: Iterable[Path],
    suite: str,
    packages: Iterable[str],
    versions: Mapping[str, str],
    base: Path = HERE,
) -> str:
    h = hashlib.sha256()

    def field(tag: str, data: bytes) -> None:
        # Length-prefixed so that no two different input sets hash the same bytes.
        h.update(f"{tag}:{len(data)}:".encode() + data)

    field("schema", SCHEMA.encode())
    field("suite", suite.encode())
    field("packages", "\n".join(packages).encode())
    for path in sources:
        field(f"file {path.relative_to(base).as_posix()}", path.read_bytes())
    field("versions", "".join(f"{p}={v}\n" for p, v in sorted(versions.items())).encode())
    return h.hexdigest()
