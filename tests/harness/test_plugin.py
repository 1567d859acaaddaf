"""The pytest plugin as users meet it: --host selection, markers, artefacts."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def lab(pytester: pytest.Pytester) -> Path:
    key = pytester.path / "id_lab"
    key.write_text("placeholder key: only existence matters here\n")
    inv = pytester.path / "labs.toml"
    inv.write_text(
        f'[hosts.gpu1]\naddress = "127.0.0.1"\nkey_file = "{key}"\n'
        'known_hosts_policy = "accept-new-insecure"\ndevice = "0000:6a:01.0"\n'
        f'[hosts.gpu2]\naddress = "127.0.0.1"\nkey_file = "{key}"\n'
        'known_hosts_policy = "accept-new-insecure"\n'
    )
    pytester.makepyfile(
        test_sample="""
import pytest

def test_host_name(host):
    print("HOST=" + host.name)

@pytest.mark.hardware
def test_needs_device(host):
    assert host.device

def test_each(lab_host):
    print("EACH=" + lab_host.name)

def test_artifacts(artifacts_dir):
    (artifacts_dir / "kept.txt").write_text("x")
"""
    )
    return inv


def test_unknown_host_fails_fast_naming_known_hosts(pytester: pytest.Pytester, lab: Path) -> None:
    result = pytester.runpytest("--inventory", str(lab), "--host", "nosuch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown host 'nosuch'*known hosts: gpu1, gpu2, local*"])
    result.stdout.no_fnmatch_line("*collected*")


def test_default_host_is_local_and_hardware_skips(pytester: pytest.Pytester, lab: Path) -> None:
    result = pytester.runpytest("--inventory", str(lab), "-s", "-rs")
    result.assert_outcomes(passed=3, skipped=1)
    result.stdout.fnmatch_lines(["*HOST=local*", "*SKIPPED*host 'local' has no PASID-capable device*"])


def test_host_with_device_runs_hardware_tests(pytester: pytest.Pytester, lab: Path) -> None:
    result = pytester.runpytest("--inventory", str(lab), "--host", "gpu1", "-s")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*HOST=gpu1*"])


def test_require_hardware_turns_skip_into_failure(pytester: pytest.Pytester, lab: Path) -> None:
    result = pytester.runpytest("--inventory", str(lab), "--host", "gpu2", "--require-hardware")
    result.assert_outcomes(passed=3, errors=1)  # fails in set-up: an error, never a skip
    result.stdout.fnmatch_lines(["*--require-hardware: host 'gpu2' has no PASID-capable device*"])


def test_several_hosts_parametrise_lab_host(pytester: pytest.Pytester, lab: Path) -> None:
    result = pytester.runpytest("--inventory", str(lab), "--host", "gpu1", "--host", "gpu2", "-v")
    result.stdout.fnmatch_lines(["*test_each?gpu1?*PASSED*", "*test_each?gpu2?*PASSED*"])


def test_artifacts_are_kept_per_test(pytester: pytest.Pytester, lab: Path) -> None:
    out = pytester.path / "arts"
    result = pytester.runpytest("--inventory", str(lab), "--artifacts", str(out), "-k", "artifacts")
    result.assert_outcomes(passed=1)
    kept = list(out.glob("tests/*/kept.txt"))
    assert len(kept) == 1 and "test_artifacts" in str(kept[0])


def test_markers_are_registered(pytester: pytest.Pytester, lab: Path) -> None:
    result = pytester.runpytest("--inventory", str(lab), "--markers")
    result.stdout.fnmatch_lines(["*@pytest.mark.hardware*", "*@pytest.mark.slow*"])


def test_each_host_is_one_xdist_group(pytester: pytest.Pytester, lab: Path) -> None:
    items, _ = pytester.inline_genitems("--inventory", str(lab), "--host", "gpu1", "--host", "gpu2")
    marks = {item.name: item.get_closest_marker("xdist_group") for item in items if item.name.startswith("test_each")}
    groups = {name: mark.kwargs["name"] for name, mark in marks.items() if mark is not None}
    assert groups == {"test_each[gpu1]": "host-gpu1", "test_each[gpu2]": "host-gpu2"}
    # and the suite really runs that way under xdist
    result = pytester.runpytest(
        "--inventory", str(lab), "--host", "gpu1", "--host", "gpu2", "-n", "2", "--dist", "loadgroup",
        "-k", "each",
    )
    result.assert_outcomes(passed=2)
