"""The report's building blocks: masking that keeps line numbers, excerpt windows,
the QI descriptors of real traces (QEMU 10 and 11), lenient workload parsing, CheckResult.data."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from report_bundles import PRIVATE_KEY, fixture_text

from harness.errors import ConfigError
from reports.bundle import CheckResult, Traffic, Verdict, mask_secrets, mask_secrets_keep_lines
from reports.excerpts import build_excerpts, clean_line
from reports.tracedata import TraceParseError, read_qi
from reports.view import parse_workloads

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "traces"


def test_mask_keeping_lines_keeps_the_line_count_and_catches_an_unended_key() -> None:
    text = f"a\n{PRIVATE_KEY}b password: s3cret\nc\n"
    masked = mask_secrets_keep_lines(text)
    assert masked.count("\n") == text.count("\n")
    assert masked.split("\n")[5] == "b password: [masked]"
    assert "BEGIN" not in masked and masked.count("[private key masked]") == 4
    cut = "boot\n-----BEGIN RSA PRIVATE KEY-----\nMIIabc\nMIIdef"
    assert mask_secrets(cut) == cut  # the plain mask needs an END line ...
    assert mask_secrets_keep_lines(cut) == "boot\n" + "\n".join(["[private key masked]"] * 3)


def test_excerpt_windows_merge_and_clip(tmp_path: Path) -> None:
    f = tmp_path / "console.log"
    f.write_bytes(b"".join(b"line %d\r\n" % n for n in range(1, 21)) + b"lone\rcr\n")
    ex = build_excerpts("console", "console.log", f, [2, 6, 15, 40])
    assert ex.total_lines == 21  # a lone \r is not a line break
    assert [(e.start, e.end) for e in ex.excerpts] == [(1, 9), (12, 18)]
    assert ex.past_end == (40,)
    assert [ln.number for ln in ex.excerpts[0].lines if ln.referenced] == [2, 6]
    assert ex.excerpts[0].lines[1].text == "line 2"  # \r stripped
    assert not build_excerpts("trace", "trace.log", None, [3]).present


def test_clean_line_strips_terminal_escapes() -> None:
    assert clean_line("\x1bc\x1b[?7l\x1b[2Jsvmval: up\r\n") == "svmval: up"


def test_read_qi_on_the_real_trace(tmp_path: Path) -> None:
    text = fixture_text("vtd-boot-trace.log.gz")
    (tmp_path / "trace.log").write_text(text)
    qi = read_qi(tmp_path / "trace.log")
    assert qi.total_lines == text.count("\n")
    # Independent count: the raw-descriptor lines, by their fixed wording.
    raw = [ln for ln in text.split("\n") if ":vtd_inv_desc invalidate desc type " in ln]
    assert len(qi.descriptors) == len(raw) == 136
    assert Counter(d.type for d in qi.descriptors) == {
        "wait": 72, "p-iotlb": 26, "iec": 22, "context-cache": 8, "iotlb": 8}
    first = qi.descriptors[0]
    assert text.split("\n")[first.line - 1].endswith(f"high 0x{first.high:x} low 0x{first.low:x}")
    assert all(d.timestamp is not None for d in qi.descriptors)


def test_read_qi_of_a_qemu11_trace_with_a_whole_second_line() -> None:
    # Real QEMU 11.1.3 lines (tests/fixtures/traces/README.md); line 101 is stamped
    # "2026-12-01T20:31:37Z": glib drops the fraction when the microseconds are 0.
    qi = read_qi(TRACES / "qemu11-whole-second.trace", TRACES / "qemu11.1.3-vtd-trace-events")
    assert qi.total_lines == 201
    assert [d.line for d in qi.descriptors if d.timestamp is not None and d.timestamp == int(d.timestamp)] == [101]
    assert len(qi.descriptors) == 67 and {d.type for d in qi.descriptors} == {"iotlb"}


def test_a_descriptor_line_that_does_not_parse_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "trace.log"
    f.write_text("vtd_reg_write x\nvtd_inv_desc invalidation type iotlb high 0x0 low 0x12\n")
    with pytest.raises(TraceParseError, match=rf"{re.escape(str(f))}:2: "):
        read_qi(f, TRACES / "qemu10.0.2-vtd-trace-events")


def test_workloads_parsing_is_lenient_about_optional_fields_but_not_the_schema() -> None:
    rows = parse_workloads({"schema": "svmval.workloads/1", "results": [
        {"name": "a", "verdict": "pass", "bandwidth": 2.5e9, "timings": {"run": 1, "note": "x"}},
        {"name": "b", "verdict": "skip", "reason": "no fine-grain system SVM",
         "bandwidth": None, "needs": "fine-grain-system"},
    ]}, Path("w.json"))
    assert rows[0].bandwidth == {"a": 2.5} and rows[0].timings == {"run": 1.0}
    assert rows[1].needs == ("fine-grain-system",) and rows[1].bandwidth == {}
    with pytest.raises(ConfigError, match="svmval.workloads/3"):
        parse_workloads({"schema": "svmval.workloads/3", "results": []}, Path("w.json"))
    with pytest.raises(ConfigError, match=r"results\[0\]"):
        parse_workloads({"schema": "svmval.workloads/1",
                         "results": [{"name": "a", "verdict": "ok"}]}, Path("w.json"))


def test_check_data_round_trips_and_old_checks_still_load() -> None:
    c = CheckResult("qi-completeness", Verdict.PASS, Traffic.REAL, "ok",
                    data={"inv_to_use": [1.0, 4.0], "inv_to_use_unit": "trace lines"})
    assert CheckResult.from_json(c.to_json()) == c
    old = c.to_json()
    del old["data"]
    assert CheckResult.from_json(old).data == {}

