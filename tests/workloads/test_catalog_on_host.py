"""The workload catalog on this machine's PoCL: every verdict, the CTS mapping, seeded
faults, the cross-device mode, and the results' contents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyopencl as cl
import pytest

from workloads.capabilities import NAMES, UNIFIED_SVM, Atomic, Svm, describe, select_device
from workloads.catalog import CPU_MMU, Env, Failed, Result, Workload, all_workloads, check, execute
from workloads.cli import SEED_ENV
from workloads.edu_dma import dma_map_struct, dma_unmap_struct, find_edu, parse_region_info, region_info_struct
from workloads.pages import PAGE, gpa_of

REPO = Path(__file__).resolve().parents[2]
CATALOG = all_workloads()
# test_svm's tests, checked against the CTS source (main, the cl_khr_unified_svm branch, the
# buffer-address-equivalence PR): each must map to a workload.
CTS_TESTS = [
    "svm_byte_granularity", "svm_set_kernel_exec_info_svm_ptrs", "svm_fine_grain_memory_consistency",
    "svm_fine_grain_sync_buffers", "svm_shared_address_space_fine_grain", "svm_shared_sub_buffers",
    "svm_shared_address_space_fine_grain_buffers", "svm_allocate_shared_buffer",
    "svm_allocate_shared_buffer_negative", "svm_shared_address_space_coarse_grain_old_api",
    "svm_shared_address_space_coarse_grain_new_api", "svm_cross_buffer_pointers_coarse_grain",
    "svm_pointer_passing", "svm_enqueue_api", "svm_migrate", "svm_negative_memcpy_overlap", "svm_corner_cases",
    "svm_buffer_address_equivalence", "unified_svm_consistency", "unified_svm_capabilities",
]
STRESS = ["first_touch", "remap_between_launches", "fork_cow", "huge_pages_2m", "multi_process", "soak"]
ATOMIC_WORKLOADS = ["svm_fine_grain_memory_consistency", "svm_fine_grain_sync_buffers"]
CROSS = ["svm_byte_granularity", "svm_shared_address_space_coarse_grain_new_api", "svm_shared_sub_buffers",
         "svm_shared_address_space_fine_grain_buffers", "svm_pointer_passing", "svm_migrate",
         "svm_fine_grain_memory_consistency"]


def _run(tmp: Path, *args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], float, str]:
    out = tmp / "results.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "workloads", "run", "--json", str(out), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    took = time.perf_counter() - t0
    assert out.exists(), proc.stdout + proc.stderr
    return json.loads(out.read_text()), took, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def run_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data, took, log = _run(tmp_path_factory.mktemp("wl"), "--soak-seconds", "1")
    data["_took"], data["_log"] = took, log
    return data


@pytest.fixture(scope="module")
def seeded_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run(tmp_path_factory.mktemp("seeded"), "--soak-seconds", "0.2", env={SEED_ENV: "1"})[0]


@pytest.fixture(scope="module")
def device() -> Any:
    p, d, _ = select_device(None)
    return describe(p, d)


def _result(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in data["results"] if r["name"] == name)


def test_every_workload_reports_in_schema_2(run_output: dict[str, Any]) -> None:
    assert run_output["schema"] == "svmval.workloads/2"
    assert run_output["mode"] == "single-device" and len(run_output["devices"]) == 1
    assert [r["name"] for r in run_output["results"]] == list(CATALOG)
    for r in run_output["results"]:
        assert {"cts", "devices", "workarounds", "exercises"} <= set(r)


def test_none_fails_and_the_catalog_is_quick(run_output: dict[str, Any]) -> None:
    failed = [(r["name"], r["reason"]) for r in run_output["results"] if r["verdict"] == "fail"]
    assert not failed, run_output["_log"]
    assert run_output["_took"] < 30, run_output["_log"]  # the whole catalog, builds included


@pytest.mark.parametrize("name", list(CATALOG))
def test_verdict_matches_device_capabilities(run_output: dict[str, Any], device: Any, name: str) -> None:
    r = _result(run_output, name)
    wl = CATALOG[name]
    missing = [NAMES[n] for n in wl.needs if not device.has(n)]
    if name.startswith("edu_dma"):
        assert r["verdict"] == "skip" and "edu" in r["reason"]  # no edu device on a host
    elif name.startswith("sva_") and not missing:
        assert r["verdict"] == "skip" and r["reason"].startswith("svmval-sva device")  # no svmval-sva on a host
    elif missing:
        assert r["verdict"] == "skip", r
        assert all(m in r["reason"] for m in missing), r["reason"]  # the CL_DEVICE_SVM_* bit is named
        assert "CL_DEVICE_SVM_" in r["reason"]
    elif name in ("svm_corner_cases", "unified_svm_capabilities") and UNIFIED_SVM not in device.extensions:
        assert r["verdict"] == "skip" and UNIFIED_SVM in r["reason"]
    elif name in ATOMIC_WORKLOADS and not device.has_atomic(Atomic.SCOPE_ALL_DEVICES):
        assert r["verdict"] == "skip" and "CL_DEVICE_ATOMIC_SCOPE_ALL_DEVICES" in r["reason"]
    else:
        assert r["verdict"] == "pass", r["reason"]


def test_every_cts_test_maps_to_a_workload_listed_and_documented() -> None:
    mapped = {t: wl.name for wl in CATALOG.values() for t in wl.cts}
    assert sorted(mapped) == sorted(CTS_TESTS)
    listing = subprocess.run([sys.executable, "-m", "workloads", "list", "--cts"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.splitlines()
    assert {tuple(line.split()) for line in listing} == set(mapped.items())
    readme = (REPO / "workloads" / "README.md").read_text()
    for test, name in mapped.items():
        assert test in readme and f"`{name}`" in readme, test


def test_scope_workaround_is_recorded_not_silent(run_output: dict[str, Any], device: Any) -> None:
    if not device.has_atomic(Atomic.SCOPE_ALL_DEVICES):
        pytest.skip("the device reports no all-devices atomic scope")
    gap = "__opencl_c_atomic_scope_all_devices" not in device.features
    for name in ATOMIC_WORKLOADS:
        r = _result(run_output, name)
        assert r["verdict"] == "pass", r["reason"]
        if gap:  # PoCL 3.1: the compiler lacks the macro; the define is in the result
            assert [w["what"] for w in r["workarounds"]] == ["built with -D__opencl_c_atomic_scope_all_devices=1"]
            assert "memory_scope_all_svm_devices" in r["workarounds"][0]["why"]
        else:
            assert r["workarounds"] == []
    assert all(not r["workarounds"] for r in run_output["results"] if r["name"] not in ATOMIC_WORKLOADS)


def test_atomics_check_host_and_device_on_the_same_counters(run_output: dict[str, Any]) -> None:
    r = _result(run_output, "svm_fine_grain_memory_consistency")
    assert r["verdict"] == "pass"
    assert any("host + devices" in s for s in r["scopes"])
    assert r["hash_tables"] == ["1 bins: 2048 items", "2 bins: 2048 items", "29 bins: 2048 items"]
    assert sorted(_result(run_output, "svm_fine_grain_sync_buffers")["targets_seen_while_running"]) == [0, 3, 65535]


def test_migrate_says_what_went_where(run_output: dict[str, Any]) -> None:
    r = _result(run_output, "svm_migrate")
    assert r["verdict"] == "pass"
    places = {m["to"] for m in r["migrations"]}
    assert "host" in places and any(p.startswith("device") for p in places)
    assert all(m["event"] == "CL_COMPLETE" for m in r["migrations"])


def test_stress_workloads_say_they_exercise_the_cpu_mmu(run_output: dict[str, Any], device: Any) -> None:
    for name in STRESS:
        assert "CPU's MMU, not the IOMMU" in CATALOG[name].doc
        r = _result(run_output, name)
        assert r["exercises"] == (CPU_MMU if device.is_cpu else "")
    assert all(not r["exercises"] for r in run_output["results"] if r["name"] not in STRESS)


def test_bandwidth_workloads_report_bandwidth(run_output: dict[str, Any]) -> None:
    for name, flavour in (("svm_coarse_buffer", "coarse"), ("svm_fine_buffer", "fine"), ("svm_enqueue_api", "memcpy")):
        assert _result(run_output, name)["bandwidth"][flavour] > 0


def test_a_seeded_wrong_result_fails_every_workload_that_passes(run_output: dict[str, Any],
                                                                seeded_output: dict[str, Any]) -> None:
    """Every kernel skips work-item 0: each workload's own verifier must notice."""
    assert "seeded_fault" in seeded_output and "seeded_fault" not in run_output
    passing = [r["name"] for r in run_output["results"] if r["verdict"] == "pass"]
    assert len(passing) >= 18
    not_caught = [n for n in passing if _result(seeded_output, n)["verdict"] != "fail"]
    assert not not_caught
    crashed = [n for n in passing if "crashed" in _result(seeded_output, n)["reason"]]
    assert not crashed  # a data check failed, not the workload


def test_two_devices_in_one_context(tmp_path: Path) -> None:
    """POCL_DEVICES="pthread pthread": the cross-device workloads run on both and the host."""
    data, _took, log = _run(tmp_path, "--devices", "all", *CROSS, env={"POCL_DEVICES": "pthread pthread"})
    assert data["mode"] == "all-devices" and [d["index"] for d in data["devices"]] == [0, 1]
    for name in CROSS:
        r = _result(data, name)
        assert r["verdict"] == "pass", (name, r["reason"], log)
        assert [d.split(":")[0] for d in r["devices"]] == ["0", "1"], name
    lists = _result(data, "svm_shared_sub_buffers")["create_verify"]
    assert len(lists) == 9 and "0->1" in lists and "1->host" in lists and "host->0" in lists
    assert "1" in _result(data, "svm_migrate")["migrations"][0]["to"]


def test_pages_carry_real_guest_physical_addresses(run_output: dict[str, Any]) -> None:
    r = _result(run_output, "svm_fine_buffer")
    assert r["pages"] and r["pages_total"] >= len(r["pages"])
    for p in r["pages"]:
        assert p["gva"] % PAGE == 0
        if os.geteuid() == 0:
            assert p["gpa"] is not None and p["gpa"] % PAGE == 0 and p["gpa"] > 0  # root reads PFNs
    hashed = [p for p in r["pages"] if "sha256" in p]
    assert hashed and all(len(p["sha256"]) == 64 for p in hashed)


def test_pagemap_gives_none_for_unmapped_address() -> None:
    assert gpa_of(0) is None
    a = np.ones(PAGE // 8, dtype=np.int64)
    if os.geteuid() == 0:
        assert gpa_of(a.ctypes.data) is not None


def _env() -> Env:
    p, d, info = select_device(None)
    ctx = cl.Context([d])
    return Env(p, d, info, ctx, cl.CommandQueue(ctx))


def test_a_wrong_result_fails_the_workload() -> None:
    """A verifier given corrupted data must fail, not pass."""

    def corrupt(env: Env, res: Result) -> None:
        a = np.arange(16)
        a[3] = -1  # the 'device' got one element wrong
        check(bool((a == np.arange(16)).all()), "element 3 wrong")

    res = execute(Workload("corrupt", "test", (), corrupt), _env())
    assert res.verdict == "fail" and "element 3" in res.reason
    with pytest.raises(Failed):
        check(False, "x")


def test_missing_capability_is_a_named_skip() -> None:
    env = _env()
    env.infos[0].svm = int(Svm.COARSE_GRAIN_BUFFER)  # pretend the device lacks fine-grain SVM
    res = execute(Workload("needs_fine", "test", (Svm.FINE_GRAIN_BUFFER,), lambda e, r: None), env)
    assert res.verdict == "skip" and "CL_DEVICE_SVM_FINE_GRAIN_BUFFER" in res.reason


def test_missing_all_devices_scope_is_a_named_skip() -> None:
    env = _env()
    env.infos[0].atomic_memory &= ~int(Atomic.SCOPE_ALL_DEVICES)
    res = execute(CATALOG["svm_fine_grain_sync_buffers"], env)
    assert res.verdict == "skip" and "CL_DEVICE_ATOMIC_SCOPE_ALL_DEVICES" in res.reason
    assert "memory_scope_all_svm_devices" in res.reason


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
