"""A checker that never fails is worthless: seed a missing invalidation into a live
guest and require the run to catch it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from harness.inventory import HostSpec
from harness.run import RunOutcome, run
from harness.seeds import seed_bug
from reports.bundle import Verdict

pytestmark = pytest.mark.slow


def test_pte_changed_without_invalidation_is_reported_stale(host: HostSpec, tmp_path: Path) -> None:
    if not host.is_local:
        pytest.skip("seeding writes guest RAM through the local lab's shared memory file")
    outcome = run(host, tmp_path, workloads=["edu_dma"], seed=seed_bug("stale-pte"))
    assert not outcome.bundle.manifest.error, outcome.bundle.manifest.error
    held = [c for c in outcome.checks if c.name == "qi-completeness" and c.workload == "edu_dma (held)"]
    assert held, [c.name for c in outcome.checks]
    assert held[0].verdict is Verdict.FAIL
    assert any(f.message.startswith("STALE") for f in held[0].findings), held[0].findings
    assert outcome.bundle.manifest.verdict is Verdict.FAIL
    # The guest was put back as it was: the final judgement of the same run is clean.
    final = [c for c in outcome.checks if c.name == "qi-completeness" and c.workload is None]
    assert final and final[0].verdict is Verdict.PASS, final[0].findings[:3]
    # The report links the stale finding to the trace lines behind it.
    html = (outcome.bundle.path / "report.html").read_text()
    links = re.findall(r'href="#(trace-L\d+)"', html)
    assert links and all(f'id="{link}"' in html for link in links)


def _results(outcome: RunOutcome) -> list[dict[str, Any]]:
    return list((outcome.workloads or {}).get("results", []))


def _seeded(host: HostSpec, tmp_path: Path, name: str) -> RunOutcome:
    if not host.is_local:
        pytest.skip("the svmval-sva device's seeded modes are the local lab's")
    bug = seed_bug(name)
    return run(host, tmp_path, workloads=list(bug.workloads), seed=bug)


def test_a_device_that_ignores_invalidations_fails_the_remap_workload(host: HostSpec, tmp_path: Path) -> None:
    outcome = _seeded(host, tmp_path, "device-ignores-invalidation")
    (remap,) = [r for r in _results(outcome) if r["name"] == "sva_munmap_remap"]
    assert remap["verdict"] == "fail", remap  # the device used the unmapped page's stale translation
    assert outcome.bundle.manifest.verdict is Verdict.FAIL
    assert outcome.bundle.manifest.host["seeded_bug"]["name"] == "device-ignores-invalidation"


def test_page_requests_that_never_close_their_group_fail_the_prq_check(host: HostSpec, tmp_path: Path) -> None:
    outcome = _seeded(host, tmp_path, "page-request-never-closed")
    (prq,) = [c for c in outcome.checks if c.name == "prq"]
    assert prq.verdict is Verdict.FAIL, prq.summary
    assert any("never closed their group" in f.message and f.trace_lines for f in prq.findings), prq.findings[:3]


def test_a_pte_changed_used_then_invalidated_later_is_a_stale_use(host: HostSpec, tmp_path: Path) -> None:
    """The case a comparison at pause points misses: the change is invalidated (by the
    guest's own unmap) before the final pause, but the device used the old translation
    in between. Every seeded stale use must be caught, with the trace lines of the hit."""
    outcome = _seeded(host, tmp_path, "stale-use")
    assert not outcome.bundle.manifest.error, outcome.bundle.manifest.error
    held = [c for c in outcome.checks if c.name == "qi-completeness" and c.workload == "edu_dma (held)"]
    assert held and held[0].verdict is Verdict.PASS, held[0].findings[:3]  # the seed came after it
    (final,) = [c for c in outcome.checks if c.name == "qi-completeness" and c.workload is None]
    assert final.verdict is Verdict.FAIL
    assert "judged across time" in final.summary
    stale = [f for f in final.findings if f.message.startswith("STALE USE (the guest missed an invalidation)")]
    (edu,) = [r for r in _results(outcome) if r["name"] == "edu_dma"]
    seeded = {int(p["gva"]) for p in edu["pages"] if p["access"] == "read"}
    caught = {int(f.message.split(" iova ")[1].split(":")[0], 16) for f in stale}
    print(f"stale-use: {len(caught & seeded)} of {len(seeded)} seeded stale uses caught")
    assert caught == seeded, (sorted(caught), sorted(seeded))
    assert all(len(f.trace_lines) == 2 for f in stale)  # the hit and its source line
    assert all("lost write permission" in f.message for f in stale)


def test_a_wrong_translation_fails_the_translation_check(host: HostSpec, tmp_path: Path) -> None:
    outcome = _seeded(host, tmp_path, "wrong-translation")
    (tr,) = [c for c in outcome.checks if c.name == "translation"]
    assert tr.verdict is Verdict.FAIL
    (f,) = tr.findings  # the one retargeted page, nothing else
    assert "model walk gives GPA" in f.message and "QEMU translated it to" in f.message
    (final,) = [c for c in outcome.checks if c.name == "qi-completeness" and c.workload is None]
    assert final.verdict is Verdict.PASS, final.findings[:3]  # put back before the guest ran on


def test_a_stray_dma_is_an_unexpected_fault(host: HostSpec, tmp_path: Path) -> None:
    outcome = _seeded(host, tmp_path, "stray-dma")
    (faults,) = [c for c in outcome.checks if c.name == "faults"]
    assert faults.verdict is Verdict.FAIL
    (f,) = faults.findings  # one page, however many accesses QEMU recorded
    assert f.message.startswith("unexpected DMA fault: sid ") and "read of page" in f.message and f.trace_lines


def test_a_viommu_that_keeps_invalidated_entries_fails_the_qi_check(host: HostSpec, tmp_path: Path) -> None:
    outcome = _seeded(host, tmp_path, "viommu-keeps-iotlb")
    (remap,) = [r for r in _results(outcome) if r["name"] == "edu_dma_remap"]
    assert remap["verdict"] == "fail" and "was not invalidated" in remap["reason"], remap
    (qi,) = [c for c in outcome.checks if c.name == "qi-completeness" and c.workload is None]
    assert qi.verdict is Verdict.FAIL
    kept = [f for f in qi.findings if "after an invalidation that covers it" in f.message]
    assert kept and all(f.message.startswith("sid 0x30 ") for f in kept), qi.findings[:3]
    assert qi.counts["stale_uses_after_invalidation"] >= 1  # and its source had changed: the new page


@pytest.mark.parametrize("name, field", [("wrong-prgi-response", "PRGI"), ("wrong-pasid-response", "PASID")])
def test_a_response_naming_another_group_fails_the_prq_check(host: HostSpec, tmp_path: Path, name: str,
                                                              field: str) -> None:
    """The guest's driver answers one page request with the wrong PRGI or PASID: the
    response answers nothing outstanding, and the group it was meant for stays open."""
    outcome = _seeded(host, tmp_path, name)
    console = (outcome.bundle.path / "vm" / "console.log").read_text(errors="replace")
    (planted,) = re.findall(rf"seeded bug: page group response {field} (\d+) sent as (\d+)", console)
    sent, wrong = map(int, planted)
    (prq,) = [c for c in outcome.checks if c.name == "prq"]
    assert prq.verdict is Verdict.FAIL, prq.summary
    stray = [f for f in prq.findings if "answers no outstanding request" in f.message]
    (open_group,) = [f for f in prq.findings if "was never answered" in f.message]
    assert len(stray) == 1 and stray[0].trace_lines, prq.findings[:3]
    assert f"{field} {wrong} " in stray[0].message and f"{field} {sent} " in open_group.message
    if field == "PASID":  # the unit found no device behind that PASID: the device never counted it
        assert any("the device counted" in f.message and "success responses" in f.message
                   for f in prq.findings), prq.findings
    (touch,) = [r for r in _results(outcome) if r["name"] == "sva_first_touch"]
    assert touch["verdict"] == "fail" and "PRI_TIMEOUT" in touch["reason"], touch
