"""Fixtures for guest_image tests: real depmod output and Debian index excerpts."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
KERNEL = "7.3.4+deb13-amd64"  # the guest kernel (recipe.KERNEL_SUITE)


@pytest.fixture(scope="session")
def real_modules_dep() -> str:
    """modules.dep of trixie-backports' 7.3.4 kernel as depmod wrote it in a built (pruned) image."""
    return lzma.decompress((FIXTURES / f"{KERNEL}.modules.dep.xz").read_bytes()).decode()


@pytest.fixture(scope="session")
def real_modules_builtin() -> str:
    return lzma.decompress((FIXTURES / f"{KERNEL}.modules.builtin.xz").read_bytes()).decode()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private SVMVAL_CACHE, so tests never touch (or reuse) the real image cache."""
    monkeypatch.setenv("SVMVAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
