"""The workload catalog on this machine's PoCL: every verdict, and the results' contents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workloads.capabilities import NAMES, Svm, select_device
from workloads.catalog import Env, Failed, Result, all_workloads, check, execute
from workloads.edu_dma import dma_map_struct, dma_unmap_struct, find_edu, parse_region_info, region_info_struct
from workloads.pages import PAGE, gpa_of

REPO = Path(__file__).resolve().parents[2]
CATALOG = all_workloads()


@pytest.fixture(scope="module")
def run_output(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("wl") / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "workloads", "run", "--json", str(out), "--soak-seconds", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def device_svm() -> int:
    return select_device(None)[2].svm


def test_every_workload_reports(run_output: dict) -> None:  # type: ignore[type-arg]
    assert run_output["schema"] == "svmval.workloads/1"
    assert [r["name"] for r in run_output["results"]] == list(CATALOG)


@pytest.mark.parametrize("name", list(CATALOG))
def test_verdict_matches_device_capabilities(run_output: dict, device_svm: int, name: str) -> None:  # type: ignore[type-arg]
    r = next(r for r in run_output["results"] if r["name"] == name)
    wl = CATALOG[name]
    missing = [NAMES[n] for n in wl.needs if not device_svm & n]
    if name.startswith("edu_dma"):
        # No edu device on a host: skipped, and saying why.
        assert r["verdict"] == "skip" and "edu" in r["reason"]
    elif missing:
        assert r["verdict"] == "skip", r
        assert all(m in r["reason"] for m in missing), r["reason"]  # the missing capability is named
    else:
        assert r["verdict"] == "pass", r["reason"]


def test_pages_carry_real_guest_physical_addresses(run_output: dict) -> None:  # type: ignore[type-arg]
    r = next(r for r in run_output["results"] if r["name"] == "svm_fine_buffer")
    assert r["pages"] and r["pages_total"] >= len(r["pages"])
    for p in r["pages"]:
        assert p["gva"] % PAGE == 0
        assert p["gpa"] is not None and p["gpa"] % PAGE == 0 and p["gpa"] > 0  # root reads PFNs
    # pages wholly inside the buffer carry the hash of what the device left there
    hashed = [p for p in r["pages"] if "sha256" in p]
    assert hashed and all(len(p["sha256"]) == 64 for p in hashed)


def test_pagemap_gives_none_for_unmapped_address() -> None:
    assert gpa_of(0) is None
    a = np.ones(PAGE // 8, dtype=np.int64)
    assert gpa_of(a.ctypes.data) is not None


def test_a_wrong_result_fails_the_workload() -> None:
    """A verifier given corrupted data must fail, not pass."""

    def corrupt(env: Env, res: Result) -> None:
        a = np.arange(16)
        a[3] = -1  # the 'device' got one element wrong
        check(bool((a == np.arange(16)).all()), "element 3 wrong")

    from workloads.catalog import Workload

    p, d, info = select_device(None)
    import pyopencl as cl

    ctx = cl.Context([d])
    res = execute(Workload("corrupt", "test", (), corrupt), Env(p, d, info, ctx, cl.CommandQueue(ctx)))
    assert res.verdict == "fail" and "element 3" in res.reason
    with pytest.raises(Failed):
        check(False, "x")


def test_missing_capability_is_a_named_skip() -> None:
    from workloads.catalog import Workload

    p, d, info = select_device(None)
    info.svm = int(Svm.COARSE_GRAIN_BUFFER)  # pretend the device lacks fine-grain SVM
    res = execute(Workload("needs_fine", "test", (Svm.FINE_GRAIN_BUFFER,), lambda e, r: None), None)
    assert res.verdict == "skip"


def test_vfio_structs_match_linux_layout() -> None:
    assert len(dma_map_struct(0x1000, 0x1000, 0x2000)) == 32
    assert dma_map_struct(1, 2, 3)[:8] == (32).to_bytes(4, "little") + (3).to_bytes(4, "little")
    assert len(dma_unmap_struct(0x1000, 0x1000)) == 24
    raw = region_info_struct(7)
    assert len(raw) == 32 and raw[8] == 7
    assert parse_region_info(bytes(raw[:16]) + (0x100).to_bytes(8, "little") + (0x7 << 40).to_bytes(8, "little")) == (
        0x100, 0x7 << 40)


def test_find_edu_in_a_sysfs_tree(tmp_path: Path) -> None:
    dev = tmp_path / "bus/pci/devices/0000:00:06.0"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x1234\n")
    (dev / "device").write_text("0x11e8\n")
    (tmp_path / "kernel/iommu_groups/4").mkdir(parents=True)
    (dev / "iommu_group").symlink_to(tmp_path / "kernel/iommu_groups/4")
    found = find_edu(tmp_path)
    assert found is not None and found.group == 4 and found.driver is None
    assert found.sid == 0x30
