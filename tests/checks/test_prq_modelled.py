"""Modelled page requests: first touches become requests; every group must be answered."""

from __future__ import annotations

from harness.checks.prq import check_prq_modelled
from reports.bundle import Traffic, Verdict

PAGES = [0x7F12_3456_0000 + i * 4096 for i in range(300)]  # more than one queue's worth


def test_every_first_touch_is_requested_and_answered() -> None:
    result = check_prq_modelled("first_touch", PAGES)
    assert result.verdict is Verdict.PASS, result.findings
    assert result.traffic is Traffic.MODELLED  # the report must say this was not real traffic
    assert result.counts["page_requests"] == result.counts["delivered"] == 300
    assert result.counts["responses"] == 300 and result.counts["overflow"] == 0


def test_unanswered_page_request_is_caught() -> None:
    result = check_prq_modelled("first_touch", PAGES, drop_group=7)
    assert result.verdict is Verdict.FAIL
    assert result.counts["unanswered"] == 1
    assert any("group 7" in f.message and "never answered" in f.message for f in result.findings)


def test_no_pages_is_not_a_pass() -> None:
    assert check_prq_modelled("first_touch", []).verdict is Verdict.FAIL


def test_non_canonical_address_is_rejected_with_invalid_request() -> None:
    result = check_prq_modelled("first_touch", [0x8000_0000_0000])
    assert result.counts["invalid_responses"] == 1
    assert result.verdict is Verdict.PASS  # answered (Invalid Request) is still answered
