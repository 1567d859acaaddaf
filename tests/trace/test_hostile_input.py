"""Hostile input to the trace reader: real fixture lines, damaged as a user's file would
be. Each case is an error naming the file and line (TraceParseError, an SvmvalError),
on both paths of iter_events and in the run's TraceFollower; never a crash or a skip."""

from __future__ import annotations

import lzma
import re
from pathlib import Path

import pytest

from harness.errors import SvmvalError
from harness.trace import BadLine, InvDesc, TraceParseError, iter_events, parser
from harness.trace.follow import EventLog, TraceFollower
from harness.viommu.descriptors import QEMU_10_SM_CAPS, InvalidDescriptor

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "traces"
TE10 = TRACES / "qemu10.0.2-vtd-trace-events"
TE11 = TRACES / "qemu11.1.3-vtd-trace-events"
PID_TS = TRACES / "vtd-rng256-ts.trace.xz"  # QEMU 10.0.2, PID@SECONDS, 3 threads
QEMU11 = TRACES / "qemu11-whole-second.trace"  # QEMU 11.1.3, ISO 8601
NAMES = ["vtd_inv_desc", "vtd_inv_qi_tail", "vtd_inv_desc_iotlb_global"]


def _ts_lines() -> list[str]:
    return lzma.decompress(PID_TS.read_bytes()).decode().splitlines(keepends=True)[:300]


def _write(tmp_path: Path, lines: list[str]) -> Path:
    f = tmp_path / "trace.log"
    f.write_text("".join(lines))
    return f


def _both_paths_raise(f: Path, formats: Path, line: int, what: str) -> None:
    for names in (None, NAMES):
        with pytest.raises(TraceParseError, match=rf"{re.escape(str(f))}:{line}: {what}") as e:
            list(iter_events(f, names=names, strict=True, trace_events=formats))
        assert isinstance(e.value, SvmvalError)


def _follower_raises(f: Path, formats: Path, line: int, what: str) -> None:
    with f.open("rb") as fh:
        follower = TraceFollower(fh, str(f), formats, [EventLog(*NAMES)])
        with pytest.raises(TraceParseError, match=rf":{line}: {what}"):
            follower.finish()


def test_a_trace_cut_mid_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    lines = _ts_lines()
    i = next(n for n, ln in enumerate(lines) if "vtd_inv_desc " in ln)
    lines[i] = lines[i][:40] + "\n"  # a line cut off, the next one written after it
    f = _write(tmp_path, lines)
    _both_paths_raise(f, TE10, i + 1, "arguments do not match")
    _follower_raises(f, TE10, i + 1, "arguments do not match")


def test_a_trace_whose_last_line_has_no_newline_is_an_error_naming_that_line(tmp_path: Path) -> None:
    lines = _ts_lines()
    lines[-1] = lines[-1][:25]  # QEMU killed mid-write
    f = _write(tmp_path, lines)
    _both_paths_raise(f, TE10, len(lines), r"last line has no newline \(truncated\)")
    _follower_raises(f, TE10, len(lines), r"last line has no newline \(truncated\)")


def test_an_unknown_event_is_an_error_naming_the_line_on_every_path(tmp_path: Path) -> None:
    lines = _ts_lines()
    lines[10] = lines[10].replace(":vtd_", ":vtd_renamed_", 1)  # a QEMU with other names
    f = _write(tmp_path, lines)
    # The selective path and the follower read only some events, but an unknown name is
    # not "another event": it means the formats are not this trace's QEMU's.
    _both_paths_raise(f, TE10, 11, "unknown event")
    _follower_raises(f, TE10, 11, "unknown event")


def test_a_timestamp_of_no_such_date_is_an_error_not_a_crash(tmp_path: Path) -> None:
    # Found by tests/fuzz: a month of 13 crashed the full path with datetime's ValueError.
    lines = QEMU11.read_text().splitlines(keepends=True)
    lines[4] = "2026-13" + lines[4][7:]  # a vtd_inv_desc line: the selective path reads it
    f = _write(tmp_path, lines)
    _both_paths_raise(f, TE11, 5, "bad timestamp prefix")
    _follower_raises(f, TE11, 5, "bad timestamp prefix")


def test_a_line_of_no_such_day_is_an_error_even_when_its_event_is_not_read(tmp_path: Path) -> None:
    # Found by tests/fuzz: day 00 on a vtd_inv_qi_head line (not in NAMES) was skipped by
    # the selective scan, which looked at the time only on the lines of wanted events.
    lines = QEMU11.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace("2026-12-01T", "2026-12-00T", 1)
    f = _write(tmp_path, lines)
    _both_paths_raise(f, TE11, 1, "bad timestamp prefix")
    _follower_raises(f, TE11, 1, "bad timestamp prefix")


@pytest.mark.parametrize(("block", "line_by_line"), [(1 << 14, 1 << 9), (200, 1 << 9), (1 << 14, 1)],
                         ids=["one block, halved", "blocks of 200 chars", "halved to single lines"])
def test_every_line_of_a_second_that_does_not_exist_is_reported_on_both_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int, line_by_line: int) -> None:
    # The selective scan decides a block of lines by its first line's second when all
    # share it, and halves a block where the second changes; here a run of lines in the
    # middle is moved to Feb 30: inside one block, across block edges, down to lines.
    monkeypatch.setattr(parser, "_SEGMENT", block)
    monkeypatch.setattr(parser, "_LINE_BY_LINE", line_by_line)
    lines = QEMU11.read_text().splitlines(keepends=True)
    for i in range(50, 60):
        lines[i] = lines[i].replace("2026-12-01T", "2026-02-30T", 1)
    f = _write(tmp_path, lines)
    for names in (None, ["vtd_inv_qi_tail"]):
        bad = [e for e in iter_events(f, names=names, trace_events=TE11) if isinstance(e, BadLine)]
        assert [(e.line, e.reason) for e in bad] == [(n, "bad timestamp prefix") for n in range(51, 61)]


@pytest.mark.parametrize("damage", ["pid", "argument"])
def test_a_number_longer_than_any_c_type_is_an_error_not_a_crash(tmp_path: Path, damage: str) -> None:
    # int() refuses more than 4300 digits (ValueError); QEMU prints at most a 64-bit value
    # and a PID of at most 10 digits, so a longer number is a damaged line.
    lines = _ts_lines()
    i = next(n for n, ln in enumerate(lines) if "vtd_inv_qi_tail " in ln)
    rest = lines[i].split("@", 1)[1]
    lines[i] = ("9" * 5000 + "@" + rest if damage == "pid"
                else lines[i].replace("tail ", "tail " + "9" * 5000, 1))
    f = _write(tmp_path, lines)
    what = "bad timestamp prefix" if damage == "pid" else "arguments do not match"
    _both_paths_raise(f, TE10, i + 1, what)
    _follower_raises(f, TE10, i + 1, what)


def test_a_line_run_into_its_copy_is_one_event_on_both_paths(tmp_path: Path) -> None:
    # Found by tests/fuzz: the newline between a line and its copy lost, the selective
    # scan found the event's name twice in the line and yielded the line twice.
    lines = _ts_lines()
    i = next(n for n, ln in enumerate(lines) if "vtd_inv_desc " in ln)
    lines[i] = lines[i][:-1] + lines[i]  # vtd_inv_desc's %s type takes the copy's start
    f = _write(tmp_path, lines)
    full = [e for e in iter_events(f, trace_events=TE10) if e.name in NAMES]
    assert list(iter_events(f, names=NAMES, trace_events=TE10)) == full
    assert [e.line for e in full].count(i + 1) == 1


def test_the_real_traces_never_step_back_in_time() -> None:
    """The evidence for the tolerance: QEMU takes the time before the log lock, so lines
    may step back by a lock wait, but the real captures (13,944 lines from 3 threads, 201
    ISO lines) do not step back at all."""
    for path, formats in ((PID_TS, TE10), (QEMU11, TE11)):
        events = list(iter_events(path, strict=True, trace_events=formats))
        stamps = [e.timestamp for e in events if e.timestamp is not None]
        assert len(stamps) == len(events) and stamps == sorted(stamps) and len(stamps) > 200


def test_a_step_back_of_a_lock_wait_is_what_qemu_writes(tmp_path: Path) -> None:
    lines = _ts_lines()
    # Swap two lines of different threads 0.3 ms apart: one thread took its time, then
    # waited for the lock the other held. Both paths read every line.
    i = next(n for n in range(1, len(lines)) if lines[n].split("@")[0] != lines[n - 1].split("@")[0])
    lines[i - 1], lines[i] = lines[i], lines[i - 1]
    f = _write(tmp_path, lines)
    assert not [e for e in iter_events(f, trace_events=TE10) if isinstance(e, BadLine)]


def test_a_large_backward_step_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    whole = lzma.decompress(PID_TS.read_bytes()).decode().splitlines(keepends=True)
    lines = whole[-300:]  # the last 300 lines, 3 s into the boot
    # The boot's first invalidations pasted after them: time jumps back by 3 s.
    early = [ln for ln in whole[:300] if "vtd_inv_desc " in ln]
    f = _write(tmp_path, lines + early[:2])
    n = len(lines) + 1
    with pytest.raises(TraceParseError, match=rf"{re.escape(str(f))}:{n}: timestamp steps back [0-9.]+ s "
                                              rf"behind line {len(lines)}"):
        list(iter_events(f, strict=True, trace_events=TE10))
    with pytest.raises(TraceParseError, match=rf":{n}: timestamp steps back"):
        list(iter_events(f, strict=True, trace_events=TE10, names=NAMES))
    _follower_raises(f, TE10, n, "timestamp steps back")
    # Not strict: one BadLine for the step, then the reading goes on from there.
    bad = [e for e in iter_events(f, trace_events=TE10) if isinstance(e, BadLine)]
    assert [b.line for b in bad] == [n]


def test_a_garbage_descriptor_is_a_bad_line_or_an_invalid_descriptor(tmp_path: Path) -> None:
    lines = _ts_lines()
    i = next(n for n, ln in enumerate(lines) if "vtd_inv_desc " in ln)
    # 17 hex digits: no uint64_t QEMU prints; reserved type 0xf: a descriptor QEMU logs.
    wide = re.sub(r"low 0x[0-9a-f]+", "low 0x1ffffffffffffffff", lines[i])
    reserved = re.sub(r"low 0x[0-9a-f]+", "low 0xf", lines[i])
    f = _write(tmp_path, lines[:i] + [wide] + lines[i + 1:])
    _both_paths_raise(f, TE10, i + 1, "arguments do not match")
    (ev,) = [e for e in iter_events(_write(tmp_path, [reserved]), trace_events=TE10) if isinstance(e, InvDesc)]
    d = ev.decode(caps=QEMU_10_SM_CAPS)
    assert isinstance(d, InvalidDescriptor) and "unknown type 0xf" in d.reason
