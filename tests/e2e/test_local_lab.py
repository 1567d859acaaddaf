"""`pytest --host local`: the same run as `svmval run`, one test per workload and check."""

from __future__ import annotations

import pytest

from harness.run import RunOutcome
from reports.bundle import Traffic, Verdict

pytestmark = pytest.mark.slow


def test_run_completed(local_run: RunOutcome) -> None:
    mf = local_run.bundle.manifest
    assert not mf.error, mf.error
    assert mf.qemu["version"] and mf.guest["image_digest"] and mf.guest["kernel"]
    for role in ("trace", "console", "workloads", "checks", "report", "junit"):
        assert role in mf.files and (local_run.bundle.path / mf.files[role]).exists(), role


def test_workload(local_run: RunOutcome, workload_name: str) -> None:
    results = {r["name"]: r for r in (local_run.workloads or {}).get("results", [])}
    assert workload_name in results, f"{workload_name} did not run in the guest"
    r = results[workload_name]
    if r["verdict"] == "skip":
        # A skip must name what the device lacks (a CL_DEVICE_* bit, an extension, the
        # svmval-sva device, a driver bug), never hide a broken feature.
        assert r.get("reason") and ("CL_" in r["reason"] or "cl_khr" in r["reason"] or "device" in r["reason"]), r
        pytest.skip(f"{workload_name}: {r['reason']}")
    assert r["verdict"] == "pass", r.get("reason")


def test_check(local_run: RunOutcome, check_name: str) -> None:
    found = [c for c in local_run.checks if c.name == check_name]
    assert found, f"the run produced no {check_name} check"
    for c in found:
        assert c.verdict is Verdict.PASS, (c.summary, [f.message for f in c.findings[:5]])
    sva = [r for r in (local_run.workloads or {}).get("results", []) if "counters_delta" in r]
    if check_name == "prq" and not sva:
        # No device on this QEMU makes page requests: the report must not pass it off as real.
        assert all(c.traffic is Traffic.MODELLED for c in found)
    else:
        assert all(c.traffic is Traffic.REAL for c in found)
    if check_name == "faults":
        # The matrix edu_dma_fault and sva_pasid_not_present provoke, each reason judged on
        # the walk QEMU made at it; the address beyond the input width and the two PASID-63
        # requests fault before QEMU reads a first-stage entry (no walk).
        (faults,) = found
        assert faults.counts["expected"] == 6, faults.summary
        assert faults.counts["reason_from_walk_at_fault"] == 3, faults.summary
        assert faults.counts["reason_from_tables_at_end"] == 3, faults.summary
        assert faults.counts["divergence_pasid_entry_type_before_present"] == 2, faults.summary
    if check_name == "qi-completeness":
        for c in found:  # every use and every fill judged, on svmval's QEMU
            assert c.counts["hits_source_checked"] == c.counts["hits"] + c.counts.get("pasid_hits", 0), c.summary
            assert c.counts["fills_walked"] == c.counts["fills"] + c.counts.get("pasid_fills", 0), c.summary
    if check_name == "prq" and sva:
        # svmval's QEMU: the device's own page requests, as many as it counted.
        (prq,) = found
        counted = sum(r["counters_delta"]["page_requests"] for r in sva)
        assert prq.counts["page_requests"] == counted > 0, (prq.summary, counted)


def test_report_of_the_real_run(local_run: RunOutcome) -> None:
    import re

    html = (local_run.bundle.path / "report.html").read_text()
    for r in (local_run.workloads or {}).get("results", []):
        assert f"<code>{r['name']}</code>" in html
    for c in local_run.checks:
        assert c.name in html
    assert "data:image/png;base64," in html  # at least one plot drawn from this run's data
    ids = set(re.findall(r'id="([^"]+)"', html))
    for target in re.findall(r'href="#([^"]+)"', html):
        assert target in ids, f"link to #{target} resolves to nothing"
    junit = (local_run.bundle.path / "junit.xml").read_text()
    assert junit.count("<testcase") == len(local_run.checks) + len((local_run.workloads or {})["results"])
