"""Resolving package versions: index parsing, the on-disk resolution cache, offline use."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest

from guest_image import resolve as r
from guest_image.resolve import (
    Resolution,
    ResolveError,
    debian_mirror,
    kernel_closure,
    parse_inrelease,
    parse_packages,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
AMD64_XZ = "be3d7d96a040eda0505c1808cccc67f183bbc05dff0842c50f88e6c396557412"
PKGS = ("python3", "pocl-opencl-icd")


def test_inrelease_gives_the_sha256_of_amd64_packages_xz_not_md5_or_arm64() -> None:
    sha, date = parse_inrelease((FIXTURES / "trixie.InRelease.excerpt").read_text())
    assert sha == AMD64_XZ
    assert date == "Sat, 21 Nov 2026 09:15:44 UTC"


def test_inrelease_without_the_index_names_it() -> None:
    with pytest.raises(ResolveError, match="main/binary-amd64/Packages.xz"):
        parse_inrelease("Date: today\nSHA256:\n abc 1 main/binary-arm64/Packages.xz\n")


def test_packages_index_versions_for_the_wanted_names_only() -> None:
    got = parse_packages(
        (FIXTURES / "trixie.Packages.excerpt").read_text(),
        ["pocl-opencl-icd", "python3-pyopencl", "not-there"],
    )
    assert got == {"pocl-opencl-icd": "6.0-6", "python3-pyopencl": "2025.1-1"}


def test_mirror_comes_from_the_deb822_sources_skipping_security(tmp_path: Path) -> None:
    src = tmp_path / "debian.sources"
    src.write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: x\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"
    )
    assert debian_mirror(src, tmp_path / "none") == "http://mirror.example/debian"


def test_mirror_from_a_one_line_sources_list(tmp_path: Path) -> None:
    legacy = tmp_path / "sources.list"
    legacy.write_text("deb [arch=amd64] http://legacy.example/debian bookworm main\n")
    assert debian_mirror(tmp_path / "none", legacy) == "http://legacy.example/debian"


def _inrelease_only(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (FIXTURES / "trixie.InRelease.excerpt").read_bytes()

    def get(url: str, timeout: float = 30) -> bytes:
        assert url.endswith("/dists/trixie/InRelease"), f"unexpected download {url}"
        return text

    def no_debootstrap(*a: object) -> list[str]:
        raise AssertionError("an unchanged index must not be resolved again")

    monkeypatch.setattr(r, "_get", get)
    monkeypatch.setattr(r, "_print_debs", no_debootstrap)


def test_an_unchanged_index_reuses_the_stored_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = Resolution("trixie", "http://m", AMD64_XZ, "then", {"python3": "3.13.5-1"})
    (tmp_path / f"{r._cache_name('trixie', PKGS)}-{AMD64_XZ[:16]}.json").write_text(
        stored.to_json()
    )
    _inrelease_only(monkeypatch)
    got = r.resolve("trixie", PKGS, tmp_path, mirror="http://m")
    assert got == stored and not got.offline


def test_a_different_package_list_does_not_reuse_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = Resolution("trixie", "http://m", AMD64_XZ, "then", {"python3": "3.13.5-1"})
    (tmp_path / f"{r._cache_name('trixie', PKGS)}-{AMD64_XZ[:16]}.json").write_text(
        stored.to_json()
    )
    _inrelease_only(monkeypatch)
    with pytest.raises(AssertionError, match="must not be resolved again"):
        r.resolve("trixie", (*PKGS, "strace"), tmp_path, mirror="http://m")


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def get(url: str, timeout: float = 30) -> bytes:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(r, "_get", get)


def test_offline_uses_the_newest_stored_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = Resolution("trixie", "http://m", AMD64_XZ, "then", {"python3": "3.13.5-1"})
    (tmp_path / f"{r._cache_name('trixie', PKGS)}-{AMD64_XZ[:16]}.json").write_text(
        stored.to_json()
    )
    _offline(monkeypatch)
    said: list[str] = []
    got = r.resolve("trixie", PKGS, tmp_path, mirror="http://m", say=said.append)
    assert got.offline and got.versions == stored.versions
    assert "unreachable" in said[0]


def test_offline_with_nothing_stored_names_the_mirror_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline(monkeypatch)
    with pytest.raises(
        ResolveError, match=r"cannot reach the Debian mirror http://m .*connect the mirror"
    ):
        r.resolve("trixie", PKGS, tmp_path, mirror="http://m")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("6.12.107-1", "6.12.117-1"),
        ("1.0~rc1-1", "1.0-1"),
        ("1.0-1", "1.0-1+deb13u1"),
        ("2:1.0-1", "3:0.1-1"),
        ("1:10.0p1-7", "1:10.0p1-7+deb13u4"),
        ("1.2.3", "1.2.3a"),
        ("1.0a", "1.0+"),
        ("2025.1-1", "2025.1.1-1"),
    ],
)
def test_debian_version_order_matches_dpkg(a: str, b: str) -> None:
    assert r.compare_versions(a, b) == -1
    assert r.compare_versions(b, a) == 1
    assert r.compare_versions(a, a) == 0


@pytest.mark.skipif(__import__("shutil").which("dpkg") is None, reason="no dpkg to compare with")
def test_version_order_agrees_with_dpkg_on_the_real_duplicates() -> None:
    import subprocess

    pairs = [
        ("6.12.107-1", "6.12.117-1"),
        ("1:2.2.4+ds-1", "1:2.2.4+ds-1~bpo1"),
        ("0.9~git1", "0.9"),
    ]
    for a, b in pairs:
        lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False).returncode == 0
        assert (r.compare_versions(a, b) < 0) == lt, (a, b)


def test_duplicate_stanzas_resolve_to_the_highest_version() -> None:
    text = (
        "Package: linux-libc-dev\nVersion: 6.12.117-1\n\n"
        "Package: linux-libc-dev\nVersion: 6.12.107-1\n\n"
        "Package: linux-libc-dev\nVersion: 6.12.99-1\n"
    )
    assert parse_packages(text, ["linux-libc-dev"]) == {"linux-libc-dev": "6.12.117-1"}


def test_the_backports_kernel_closure_from_the_real_index() -> None:
    # Real stanzas of trixie-backports' Packages (2026-11-30), linux-image-amd64's chain.
    text = (FIXTURES / "trixie-backports.kernel.Packages.excerpt").read_text()
    got = kernel_closure(text, "linux-image-amd64")
    assert got["linux-image-amd64"] == got["linux-image-7.3.4+deb13-amd64"] == "7.3.4-1~bpo13+1"
    assert set(got) == {"linux-image-amd64", "linux-image-7.3.4+deb13-amd64", "linux-binary-7.3.4+deb13-amd64",
                        "linux-modules-7.3.4+deb13-amd64", "linux-base-7.3.4+deb13-amd64",
                        "linux-base-amd64", "linux-modules-amd64"}
    with pytest.raises(ResolveError, match="linux-image-nope"):
        kernel_closure(text, "linux-image-nope")
