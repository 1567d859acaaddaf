"""The cache key: stable for the same inputs, different when any input changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guest_image import digest as digest_mod
from guest_image import recipe
from guest_image.build import recipe_digest
from guest_image.digest import BUILD_MODULES, build_sources, compute_digest
from guest_image.resolve import Resolution

HERE = Path(digest_mod.__file__).resolve().parent
VERSIONS = {"pocl-opencl-icd": "6.0-6", "python3": "3.13.5-1", "linux-image-amd64": "6.12.117-1"}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the builder's sources, free to edit."""
    base = tmp_path / "guest_image"
    (base / "files").mkdir(parents=True)
    for name in BUILD_MODULES:
        shutil.copy2(HERE / name, base / name)
    for f in (HERE / "files").iterdir():
        shutil.copy2(f, base / "files" / f.name)
    shutil.copytree(HERE / "driver", base / "driver")
    return base


def key(
    base: Path,
    *,
    suite: str = "trixie",
    packages: tuple[str, ...] = recipe.PACKAGES,
    versions: dict[str, str] = VERSIONS,
) -> str:
    return compute_digest(build_sources(base), suite, packages, versions, base)


def test_sources_cover_the_builder_and_every_guest_file() -> None:
    names = {p.relative_to(HERE).as_posix() for p in build_sources()}
    assert {
        "recipe.py",
        "build.py",
        "rootfs.py",
        "initramfs.py",
        "files/svmval-init",
        "files/initramfs-init",
        "files/sshd_config",
    } <= names
    assert "cli.py" not in names  # presentation only: editing it must not rebuild the image


def test_same_inputs_same_digest_even_from_another_directory(tree: Path) -> None:
    assert key(tree) == key(tree) == key(HERE)
    assert key(tree, versions=dict(reversed(list(VERSIONS.items())))) == key(tree)


@pytest.mark.parametrize(
    "rel", ["files/svmval-init", "files/sshd_config", "recipe.py", "initramfs.py"]
)
def test_editing_any_source_changes_the_digest(tree: Path, rel: str) -> None:
    before = key(tree)
    with open(tree / rel, "a") as fh:
        fh.write("\n# edited\n")
    assert key(tree) != before


def test_suite_packages_and_versions_all_count(tree: Path) -> None:
    base = key(tree)
    assert key(tree, suite="bookworm") != base
    assert key(tree, packages=(*recipe.PACKAGES, "strace")) != base
    assert key(tree, versions={**VERSIONS, "pocl-opencl-icd": "6.0-7"}) != base
    assert key(tree, versions={**VERSIONS, "libfoo1": "1.0"}) != base


def test_fields_cannot_bleed_into_each_other(tree: Path) -> None:
    # Without length prefixes "ab"+"c" and "a"+"bc" would hash alike.
    assert key(tree, versions={"ab": "c"}) != key(tree, versions={"a": "bc"})


def test_recipe_digest_uses_the_resolution_it_is_given() -> None:
    res = Resolution("trixie", "http://mirror", "0" * 64, "today", VERSIONS)
    assert recipe_digest(res) == compute_digest(
        build_sources(), recipe.SUITE, recipe.PACKAGES, VERSIONS
    )
