"""harness.baseline: the host baseline run and the guest/host bandwidth ratio, and the
reports' use of it (plot and compare)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.baseline import RATIO_NOTE, attach_ratio, run_host_baseline
from reports.compare import _metrics
from reports.plots import bandwidth
from reports.view import parse_workloads


def _doc(bw: dict[str, dict[str, float]], *, host: str = "h") -> dict[str, Any]:
    return {"schema": "svmval.workloads/2", "host": {"hostname": host},
            "device": {"name": "dev", "driver_version": "3.1"},
            "results": [{"name": n, "verdict": "pass", "bandwidth": b} for n, b in bw.items()]
            + [{"name": "no_bw", "verdict": "pass", "bandwidth": {}}]}


GUEST = _doc({"svm_fine_buffer": {"fine": 2e8}, "svm_enqueue_api": {"memcpy": 1e8}}, host="guest")
HOST = _doc({"svm_fine_buffer": {"fine": 8e9}, "svm_enqueue_api": {"memcpy": 4e9}})


def test_ratio_per_flavour_is_guest_over_host() -> None:
    before = copy.deepcopy(GUEST)
    out = attach_ratio(GUEST, HOST)
    assert GUEST == before  # pure: the input is left alone
    fine = next(r for r in out["results"] if r["name"] == "svm_fine_buffer")
    assert fine["bandwidth_host"] == {"fine": 8e9}
    assert fine["bandwidth_ratio"] == {"fine": pytest.approx(0.025)}
    memcpy = next(r for r in out["results"] if r["name"] == "svm_enqueue_api")
    assert memcpy["bandwidth_ratio"] == {"memcpy": pytest.approx(0.025)}
    untouched = next(r for r in out["results"] if r["name"] == "no_bw")
    assert "bandwidth_ratio" not in untouched and "bandwidth_host" not in untouched
    assert out["bandwidth_baseline"]["note"] == RATIO_NOTE and "TCG" in RATIO_NOTE
    assert out["bandwidth_baseline"]["host_device"] == "dev"


def test_ratio_without_a_host_side() -> None:
    out = attach_ratio(GUEST, None)
    assert out["bandwidth_baseline"]["host"] is None and "no host baseline" in out["bandwidth_baseline"]["note"]
    assert all("bandwidth_ratio" not in r for r in out["results"])
    partial = attach_ratio(GUEST, _doc({"svm_fine_buffer": {"fine": 4e8}}))
    memcpy = next(r for r in partial["results"] if r["name"] == "svm_enqueue_api")
    assert memcpy["bandwidth_host"] == {} and memcpy["bandwidth_ratio"] == {}
    assert partial["bandwidth_baseline"]["no_host_measurement"] == ["svm_enqueue_api"]
    skipped_host = _doc({"svm_fine_buffer": {"fine": 4e8}})
    skipped_host["results"][0]["verdict"] = "skip"
    assert "svm_fine_buffer" in attach_ratio(GUEST, skipped_host)["bandwidth_baseline"]["no_host_measurement"]


def test_host_baseline_runs_the_same_workloads_here(tmp_path: Path) -> None:
    said: list[str] = []
    got = run_host_baseline(["svm_fine_buffer", "svm_enqueue_api"], tmp_path / "host.json", said.append)
    assert got is not None, said
    assert [r["name"] for r in got["results"]] == ["svm_fine_buffer", "svm_enqueue_api"]
    assert (tmp_path / "host.json").exists()
    out = attach_ratio(got, got)  # the host against itself: exactly 1
    for r in out["results"]:
        assert r["bandwidth_ratio"] and all(v == pytest.approx(1.0) for v in r["bandwidth_ratio"].values())


def test_host_baseline_without_an_opencl_device_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "no-icds"
    empty.mkdir()
    monkeypatch.setenv("OCL_ICD_VENDORS", str(empty))  # the ICD loader then finds no platform
    said: list[str] = []
    assert run_host_baseline(["svm_fine_buffer"], tmp_path / "host.json", said.append) is None
    assert any("no OpenCL device" in s for s in said), said


def _run_view(guest: dict[str, Any], host: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(
        workloads=parse_workloads(guest, Path("workloads.json")),
        workloads_host=parse_workloads(host, Path("workloads-host.json")) if host else [],
        manifest=SimpleNamespace(durations={}), duration_s=lambda: None)


def test_reports_read_the_ratio_plot_it_and_compare_it() -> None:
    old = _run_view(attach_ratio(GUEST, HOST))
    rows = {w.name: w for w in old.workloads}
    assert rows["svm_fine_buffer"].bandwidth_host == {"fine": pytest.approx(8.0)}  # GB/s
    assert rows["svm_fine_buffer"].bandwidth_ratio == {"fine": pytest.approx(0.025)}
    plot = bandwidth(old)
    assert plot.png_b64 and "guest / host" in plot.caption  # host bars from bandwidth_host alone
    faster = copy.deepcopy(GUEST)
    faster["results"][0]["bandwidth"]["fine"] = 4e8
    new = _run_view(attach_ratio(faster, HOST))
    before, after = _metrics(old), _metrics(new)
    assert before["svm_fine_buffer bandwidth ratio fine"] == (pytest.approx(0.025), "guest/host", True)
    assert after["svm_fine_buffer bandwidth ratio fine"][0] == pytest.approx(0.05)
    # a bundle with workloads-host.json and no attached ratio: the ratio comes from both sides
    both = _run_view(GUEST, HOST)
    assert _metrics(both)["svm_enqueue_api bandwidth ratio memcpy"][0] == pytest.approx(0.025)
