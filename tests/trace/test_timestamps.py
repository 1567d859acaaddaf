"""One timestamp grammar: QEMU 10's PID@SECONDS and QEMU 11's ISO 8601, whole seconds
included, on both parser paths (every event, selected events)."""

from __future__ import annotations

import lzma
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harness.trace import BadLine, InvDesc, TraceEvent, TraceParseError, iter_events
from harness.trace.parser import iso_seconds, parse_stamp

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "traces"
QEMU11 = TRACES / "qemu11-whole-second.trace"  # real 11.1.3 lines; line 101 is whole-second
TE11 = TRACES / "qemu11.1.3-vtd-trace-events"
TE10 = TRACES / "qemu10.0.2-vtd-trace-events"
WHOLE = datetime(2026, 12, 1, 20, 31, 37, tzinfo=UTC).timestamp()

Reader = Callable[[Path, Path], list[TraceEvent]]  # a trace and its trace-events formats


@pytest.fixture(params=["every event", "selected events"])
def read(request: pytest.FixtureRequest) -> Reader:
    def reader(path: Path, formats: Path) -> list[TraceEvent]:
        names = ["vtd_inv_desc", "vtd_inv_desc_iotlb_global", "vtd_inv_qi_head"]
        wanted = names if request.param == "selected events" else None
        return list(iter_events(path, names=wanted, strict=True, trace_events=formats))
    return reader


def test_the_whole_second_line_of_qemu11_is_an_event_at_that_second(read: Reader) -> None:
    events = read(QEMU11, TE11)
    assert len(events) == 201 and not [e for e in events if isinstance(e, BadLine)]
    (whole,) = [e for e in events if e.line == 101]
    assert isinstance(whole, InvDesc) and whole.timestamp == WHOLE and whole.low == 0x12
    stamps = [e.timestamp for e in events if e.timestamp is not None]
    assert len(stamps) == len(events)
    assert stamps == sorted(stamps)  # 36.999997 < 37 < 37.000003: not read as 37.0 + junk


def test_a_trace_that_starts_on_a_whole_second_line(read: Reader, tmp_path: Path) -> None:
    # The selective path decides the prefix form from the first line.
    cut = tmp_path / "trace.log"
    cut.write_text("".join(QEMU11.read_text().splitlines(keepends=True)[100:]))
    events = read(cut, TE11)
    assert len(events) == 101 and events[0].timestamp == WHOLE


def test_qemu10_stamps_still_read(read: Reader, tmp_path: Path) -> None:
    plain = tmp_path / "trace.log"
    plain.write_text(lzma.decompress((TRACES / "vtd-rng256-ts.trace.xz").read_bytes()).decode())
    events = read(plain, TE10)
    assert events and all(e.pid is not None and e.timestamp is not None for e in events)


def test_the_grammar() -> None:
    assert parse_stamp("2026-12-01T20:31:37Z vtd_x ") == (None, WHOLE, 21)
    assert parse_stamp("2026-12-01T20:31:37.000003Z vtd_x ") == (None, pytest.approx(WHOLE + 3e-6), 28)
    assert parse_stamp("1234@1700000000.000123:vtd_x ") == (1234, 1700000000.000123, 23)
    assert parse_stamp("2026-12-01T20:31:37 vtd_x") is None  # no Z: not QEMU's
    with pytest.raises(ValueError):
        iso_seconds("2026-12-01T20:31:37")


def test_a_bad_stamp_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "trace.log"
    lines = QEMU11.read_text().splitlines(keepends=True)
    lines[5] = "2026-12-01T20:31:3Z" + lines[5][lines[5].index("Z") + 1:]
    f.write_text("".join(lines))
    with pytest.raises(TraceParseError, match=rf"{f}:6: bad timestamp prefix"):
        list(iter_events(f, strict=True, trace_events=TE11))
