"""The trace reader on hostile text: every input gives events and BadLines or the named
parse error, and the full and the selective path agree. Mutations start from real lines."""

from __future__ import annotations

import lzma
import tempfile
from pathlib import Path

import pytest
from fuzzcount import counted, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from harness.trace import BadLine, TraceEvent, TraceParseError, iter_events

pytestmark = pytest.mark.fuzz

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "traces"
TE10 = TRACES / "qemu10.0.2-vtd-trace-events"
TE11 = TRACES / "qemu11.1.3-vtd-trace-events"
# Real lines of each prefix form: none (10.0.2), PID@SECONDS (10.0.2), ISO 8601 (11.1.3).
PLAIN = lzma.decompress((TRACES / "vtd-rng256.trace.xz").read_bytes()).decode().splitlines(keepends=True)[:400]
PID = lzma.decompress((TRACES / "vtd-rng256-ts.trace.xz").read_bytes()).decode().splitlines(keepends=True)[:400]
ISO = (TRACES / "qemu11-whole-second.trace").read_text().splitlines(keepends=True)
SOURCES = [(PLAIN, TE10), (PID, TE10), (ISO, TE11)]
WANTED = ["vtd_inv_desc", "vtd_inv_qi_tail", "vtd_inv_desc_iotlb_global", "vtd_dmar_translate"]
TIME_ORDER = "timestamp steps back"


def _read(text: str, formats: Path, *, names: list[str] | None = None,
          strict: bool = False) -> list[TraceEvent] | TraceParseError:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "trace.log"
        f.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            return list(iter_events(f, trace_events=formats, names=names, strict=strict))
        except TraceParseError as e:  # the one error allowed
            return e


def _agree(text: str, formats: Path) -> None:
    full = _read(text, formats)
    sel = _read(text, formats, names=WANTED)
    assert isinstance(full, list) and isinstance(sel, list)  # non-strict never raises
    bad = [e for e in full if isinstance(e, BadLine)]
    wanted_full = [e for e in full if e.name in WANTED or (isinstance(e, BadLine) and not e.name)]
    if not bad:
        # A clean trace: the selective path gives exactly the wanted events.
        assert sel == [e for e in full if e.name in WANTED]
        return
    by_line = {e.line: e for e in full}
    for e in sel:
        f = by_line[e.line]  # the selective path never makes up a line
        if isinstance(e, BadLine) or isinstance(f, BadLine):
            # Either both see a bad line, or they differ only by the time-order check,
            # which each path applies to the timestamps it reads.
            bad_one = e if isinstance(e, BadLine) else f
            assert isinstance(bad_one, BadLine)
            assert isinstance(e, BadLine) == isinstance(f, BadLine) or TIME_ORDER in bad_one.reason
        else:
            assert e == f
    # Nothing the full path reports of a wanted or nameless line is missed.
    missed = {e.line for e in wanted_full} - {e.line for e in sel}
    assert not missed, [by_line[n] for n in sorted(missed)]
    strict = _read(text, formats, strict=True)
    assert isinstance(strict, TraceParseError) and f":{bad[0].line}: " in str(strict)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, Path]:
    """A window of real lines with a few edits: bytes changed, cut, lines swapped,
    duplicated or dropped, text spliced in; sometimes the last newline cut off."""
    lines, formats = draw(st.sampled_from(SOURCES))
    start = draw(st.integers(0, len(lines) - 1))
    out = list(lines[start:start + draw(st.integers(1, 60))])
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(out) - 1))
        line = out[i]
        op = draw(st.sampled_from(["char", "cut", "swap", "dup", "drop", "splice", "digits"]))
        if op == "char" and line:
            j = draw(st.integers(0, len(line) - 1))
            out[i] = line[:j] + draw(st.characters(codec="utf-8")) + line[j + 1:]
        elif op == "cut":
            out[i] = line[:draw(st.integers(0, len(line)))]
        elif op == "swap":
            k = draw(st.integers(0, len(out) - 1))
            out[i], out[k] = out[k], out[i]
        elif op == "dup":
            out.insert(i, line)
        elif op == "drop" and len(out) > 1:
            del out[i]
        elif op == "splice":
            j = draw(st.integers(0, len(line)))
            out[i] = line[:j] + draw(st.text(max_size=20)) + line[j:]
        elif op == "digits":
            # Change one number (a timestamp, a hex value) to another of any size.
            j = draw(st.integers(0, len(line)))
            out[i] = line[:j] + str(draw(st.integers(0, 1 << 80))) + line[j:]
    return "".join(out), formats


@fuzz_settings()
@given(mutated())
@counted
def test_mutated_real_lines_read_as_events_badlines_or_the_named_error(case: tuple[str, Path]) -> None:
    _agree(*case)


@fuzz_settings()
@given(st.text(max_size=300), st.sampled_from(SOURCES))
@counted
def test_arbitrary_text_reads_as_events_badlines_or_the_named_error(text: str, source: tuple) -> None:
    _agree(text, source[1])


@fuzz_settings()
@given(st.lists(st.sampled_from(PID), min_size=1, max_size=30), st.lists(st.text(max_size=40), max_size=3))
@counted
def test_given_lines_read_like_a_file(lines: list[str], junk: list[str]) -> None:
    """The line-iterable source (no file) gives the full path's answer."""
    text = "".join(lines) + "".join(j.replace("\n", "") + "\n" for j in junk)
    full = _read(text, TE10)
    lines_given = [ln + "\n" for ln in text.split("\n")[:-1]]  # on \n only, as QEMU ends lines
    assert list(iter_events(lines_given, trace_events=TE10)) == full
