"""The image cache: atomic publication, one builder per digest, reuse, --force.

The real builder (debootstrap, minutes) is swapped for one that writes the image's
files: what is under test here is the cache around it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from guest_image import build
from guest_image.resolve import Resolution

RES = Resolution("trixie", "http://m", "0" * 64, "then", {"python3": "3.13.5-1"})


@pytest.fixture
def builds(cache: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []

    def fake_build(work: Path, digest: str, resolution: Resolution, say: build.Progress) -> None:
        calls.append(work)
        time.sleep(0.3)  # long enough for a second builder to arrive meanwhile
        for name in (*build.IMAGE_FILES, "id_ed25519", "ssh_host_ed25519_key.pub"):
            (work / name).write_text(name)
        (work / "manifest.json").write_text(
            json.dumps(
                {"digest": digest, "cmdline": "console=ttyS0", "kernel": "k", "n": len(calls)}
            )
        )

    monkeypatch.setattr(build, "_build", fake_build)
    monkeypatch.setattr(build, "current_resolution", lambda say=None: RES)
    return calls


def test_build_then_reuse(builds: list[Path], cache: Path) -> None:
    first = build.ensure_image()
    assert first.dir == cache / "images" / build.recipe_digest(RES)
    assert first.rootfs.read_text() == "rootfs.img" and first.cmdline == "console=ttyS0"
    assert not builds[0].exists()  # the temp dir was renamed into place
    second = build.ensure_image()
    assert len(builds) == 1 and second == first
    assert build.cached_image() == first


def test_two_builders_at_once_build_once(builds: list[Path]) -> None:
    results: list[build.GuestImage] = []
    threads = [
        threading.Thread(target=lambda: results.append(build.ensure_image())) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert results[0] == results[1]


def test_force_rebuilds_and_replaces(builds: list[Path]) -> None:
    build.ensure_image()
    again = build.ensure_image(force=True)
    assert len(builds) == 2 and again.manifest["n"] == 2
    assert not list(again.dir.parent.glob("old-*"))


def test_a_failed_build_leaves_nothing_behind(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(work: Path, digest: str, resolution: Resolution, say: build.Progress) -> None:
        (work / "rootfs.img").write_text("half")
        raise build.ImageBuildError("debootstrap failed")

    monkeypatch.setattr(build, "_build", broken)
    monkeypatch.setattr(build, "current_resolution", lambda say=None: RES)
    with pytest.raises(build.ImageBuildError):
        build.ensure_image()
    images = cache / "images"
    assert not list(images.glob("build-*"))
    assert not (images / build.recipe_digest(RES)).exists()
    assert build.cached_image() is None


def test_leftovers_of_a_crashed_build_are_cleared(builds: list[Path], cache: Path) -> None:
    digest = build.recipe_digest(RES)
    crashed = cache / "images" / f"build-{digest[:12]}-crashed"
    crashed.mkdir(parents=True)
    build.ensure_image()
    assert not crashed.exists()
