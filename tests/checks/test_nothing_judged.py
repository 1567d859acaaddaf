"""A check with nothing to judge is an ERROR naming what was missing, never a PASS."""

from __future__ import annotations

from harness.checks.faults import check_faults
from harness.checks.qi import check_qi
from harness.checks.translation import check_translation
from harness.results import Verdict
from harness.viommu import GuestMemory


def test_faults_with_no_provoked_fault_is_an_error_naming_the_skipped_workload() -> None:
    why = "no workload provoked a fault: edu_dma_fault skip: no edu device in this guest"
    r = check_faults([], [], None, None, console="", none_provoked=why)
    assert r.verdict is Verdict.ERROR
    assert r.summary.startswith("not judged: " + why)


def test_translation_with_no_pages_is_an_error_naming_the_workload() -> None:
    r = check_translation("edu_dma", 0x18, [], GuestMemory(4096), 0, {}, None)
    assert r.verdict is Verdict.ERROR and "edu_dma reported no pages" in r.summary


def test_qi_on_an_empty_trace_is_an_error_naming_the_missing_descriptors_and_root() -> None:
    r = check_qi([], GuestMemory(4096))
    assert r.verdict is Verdict.ERROR
    assert "no invalidation descriptors (vtd_inv_desc)" in r.summary
    assert "no root-table pointer (vtd_reg_dmar_root)" in r.summary
