"""Streaming parser of QEMU ``-trace 'vtd_*' -D FILE`` logs into typed events.

QEMU's log backend writes one line per event: ``name args\\n``, or with
``-msg timestamp=on`` ``PID@SECONDS.MICROS:name args\\n`` (the name is followed
by a space even when the format is empty).

Two paths, same results:

* every event (``iter_events(src)``): one line at a time, dispatch on the name
  (a dict lookup), then that event's one precompiled regex. Every line is
  checked; unknown and malformed lines come out as :class:`BadLine`.
* selected events (``iter_events(path, names=...)``): the file is read in large
  chunks and each wanted event is found with a regex that starts with the
  literal ``name ``, so the regex engine skips the other lines in C. Lines of
  the wanted events are still checked (the number of ``name `` occurrences must
  equal the number of well-formed matches; otherwise the chunk's bad lines are
  located), lines of other events are not parsed: only their timestamp's second is
  checked, a block of lines at a time (_no_such_second). This is what a check that
  needs a handful of events out of a 100 MB trace should use.
"""

from __future__ import annotations

import io
import lzma
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from ..errors import SvmvalError
from .events import TYPED_BY_NAME, BadLine, GenericEvent, InvDesc, TraceEvent
from .formats import EventFormat, EventTable, load_event_table

Source = str | Path | Iterable[str]

# The one timestamp grammar for `-msg timestamp=on` lines, both forms QEMU writes:
#   QEMU <= 10.x: "PID@SECONDS.MICROS:name args"
#   QEMU >= 11:   "2026-11-24T20:26:22.230274Z name args", and, when the microseconds
#                 are 0, glib's ISO 8601 drops the fraction: "2026-12-01T20:30:37Z name".
# A PID has at most 10 digits (pid_max <= 2^22): a longer one is not QEMU's, and int() of
# one over 4300 digits would raise.
_PID_PREFIX = r"\d{1,10}@\d+(?:\.\d+)?:"
_ISO_PREFIX = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z "
STAMP = re.compile(
    r"(?:(?P<pid>\d{1,10})@(?P<secs>\d+(?:\.\d+)?):"
    r"|(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) )"
)
_EPOCH_OF: dict[str, float] = {}  # "YYYY-MM-DDTHH:MM:SS" -> epoch seconds (one parse per second)


def iso_seconds(stamp: str) -> float:
    """Epoch seconds of QEMU 11's "YYYY-MM-DDTHH:MM:SS[.ffffff]Z" (raises ValueError)."""
    if len(stamp) < 20 or stamp[-1] != "Z" or (len(stamp) > 20 and stamp[19] != "."):
        raise ValueError(f"not an ISO 8601 UTC time: {stamp!r}")
    whole = stamp[:19]
    base = _EPOCH_OF.get(whole)
    if base is None:
        base = _EPOCH_OF[whole] = datetime.fromisoformat(whole + "+00:00").timestamp()
    return base + (float("0" + stamp[19:-1]) if len(stamp) > 20 else 0.0)


def parse_stamp(text: str) -> tuple[int | None, float, int] | None:
    """(pid, seconds, length of the prefix) of a timestamped line, or None."""
    m = STAMP.match(text)
    if m is None:
        return None
    if m.group("iso") is not None:
        try:
            return None, iso_seconds(m.group("iso")), m.end()
        except ValueError:  # the grammar's shape, but no such time (month 13): not QEMU's
            return None
    return int(m.group("pid")), float(m.group("secs")), m.end()


_CHUNK = 8 << 20  # characters per read on the selective path

# How far a line's timestamp may lie behind the latest one before it. QEMU takes the
# time before the log lock (util/log.c qemu_log: "Prepare the timestamp *outside* the
# logging lock"), so a thread that waited for the lock writes an earlier time after a
# later one: by the lock wait, or a preemption while another thread held it (ms). The
# real traces on record never step back at all (tests/trace/test_hostile_input.py); a
# second is far beyond any lock wait, so a larger step is a trace QEMU did not write
# in that order (files concatenated, lines moved, the host clock set back).
BACKWARD_TOLERANCE_S = 1.0


class TimeOrder:
    """Flags an event whose timestamp lies more than BACKWARD_TOLERANCE_S behind the
    latest timestamp read before it. After a flag the clock restarts from that line,
    so one bad step is one BadLine, not every line after it."""

    def __init__(self) -> None:
        self.latest = float("-inf")
        self.latest_line = 0

    def check(self, ev: TraceEvent) -> TraceEvent:
        ts = ev.timestamp
        if ts is None or type(ev) is BadLine:
            return ev
        if ts < self.latest - BACKWARD_TOLERANCE_S:
            bad = BadLine(ev.name, ev.line, ev.pid, ts, _event_text(ev),
                          f"timestamp steps back {self.latest - ts:.6f} s behind line {self.latest_line} "
                          f"(QEMU steps back by at most a log-lock wait, < {BACKWARD_TOLERANCE_S:g} s)")
            self.latest, self.latest_line = ts, ev.line
            return bad
        if ts >= self.latest:
            self.latest, self.latest_line = ts, ev.line
        return ev


def _event_text(ev: TraceEvent) -> str:
    # A parsed event keeps no text; its repr names what was read.
    return repr(ev)


class TraceParseError(SvmvalError):
    """A bad line under ``strict=True``; the message names file and line."""

    def __init__(self, source: str, bad: BadLine) -> None:
        super().__init__(
            f"{source}:{bad.line}: {bad.reason}: {bad.text[:200]!r} (re-capture the trace, or "
            "parse with strict=False to get BadLine events, or pass trace_events= the "
            "trace-events-all of the QEMU that wrote it)")
        self.source = source
        self.bad = bad


# ------------------------------------------------------------------ builders

Builder = Callable[[str, int, "int | None", "float | None", tuple[str, ...]], TraceEvent]


@dataclass(frozen=True)
class _Compiled:
    """Per-event state built once per table: the regex and how to make the event."""

    fmt: EventFormat
    build: Builder
    typed: bool


def _builder(fmt: EventFormat) -> tuple[Builder, bool]:
    cls = TYPED_BY_NAME.get(fmt.name)
    convs = fmt.converters
    if cls is not None:
        fields = [f for f in cls.__dataclass_fields__ if f not in TraceEvent.__dataclass_fields__]
        mapped = [cls.ARGS.get(a, a) for a in fmt.arg_names]
        if sorted(mapped) == sorted(fields):
            order = [mapped.index(f) for f in fields]
            # One straight-line constructor per event, converters inlined: a trace has
            # hundreds of thousands of events and the generic zip/list path costs 3x.
            args = ", ".join(f"c{i}(g[{i}])" for i in order)
            scope: dict[str, Any] = {"cls": cls, **{f"c{i}": c for i, c in enumerate(convs)}}
            exec(f"def build_typed(name, line, pid, ts, g):\n    return cls(name, line, pid, ts, {args})\n",
                 scope)
            built: Builder = scope["build_typed"]
            return built, True
        # Arguments changed in this QEMU version: fall through to a generic event
        # instead of assigning values to the wrong fields.
    names = fmt.arg_names

    def build_generic(name: str, line: int, pid: int | None, ts: float | None,
                      groups: tuple[str, ...]) -> TraceEvent:
        return GenericEvent(name, line, pid, ts,
                            {n: c(g) for n, c, g in zip(names, convs, groups, strict=True)})
    return build_generic, False


_COMPILED: dict[int, dict[str, _Compiled]] = {}


def _compiled(table: EventTable) -> dict[str, _Compiled]:
    got = _COMPILED.get(id(table))
    if got is None:
        got = {}
        for name, fmt in table.formats.items():
            build, typed = _builder(fmt)
            got[name] = _Compiled(fmt, build, typed)
        _COMPILED[id(table)] = got
    return got


def untyped_events(table: EventTable) -> list[str]:
    """Names with a typed class whose arguments no longer fit this table's format."""
    comp = _compiled(table)
    return sorted(n for n in TYPED_BY_NAME if n in comp and not comp[n].typed)


# ------------------------------------------------------------------ opening


def _open_text(path: Path) -> IO[str]:
    # Split on \n only (newline="\n") so line numbers agree with any other tool.
    if path.suffix == ".xz":
        return io.TextIOWrapper(lzma.open(path, "rb"), errors="replace", newline="\n")
    return path.open(errors="replace", newline="\n")


# ------------------------------------------------------------- line by line


def _parse_line(text: str, lineno: int, comp: dict[str, _Compiled],
                wanted: frozenset[str] | None) -> TraceEvent | None:
    body = text
    pid: int | None = None
    ts: float | None = None
    if text[:1].isdigit():
        stamp = parse_stamp(text)
        if stamp is None:
            return BadLine("", lineno, None, None, text, "bad timestamp prefix")
        pid, ts, end = stamp
        body = text[end:]
    name, sep, rest = body.partition(" ")
    c = comp.get(name)
    if wanted is not None and name not in wanted and c is not None:
        return None  # another known event: not looked at (an unknown name is a BadLine)
    if c is None or not sep:
        return BadLine(name if c else "", lineno, pid, ts, text,
                       "unknown event" if c is None else "no space after event name")
    m2 = c.fmt.regex.fullmatch(rest)
    if m2 is None:
        return BadLine(name, lineno, pid, ts, text, f"arguments do not match {c.fmt.fmt!r}")
    return c.build(name, lineno, pid, ts, m2.groups())


def _iter_lines(lines: Iterable[str], comp: dict[str, _Compiled],
                wanted: frozenset[str] | None) -> Iterator[TraceEvent]:
    from_file = isinstance(lines, io.TextIOBase)
    for lineno, raw in enumerate(lines, 1):
        if raw.endswith("\n"):
            text = raw[:-1]
        elif from_file:
            # QEMU writes whole lines; a missing newline means the file was cut.
            yield BadLine("", lineno, None, None, raw, "last line has no newline (truncated)")
            continue
        else:
            text = raw  # caller-supplied lines (e.g. splitlines()) carry no newline
        ev = _line_event(text, lineno, comp, wanted)
        if ev is not None:
            yield ev


def _line_event(text: str, lineno: int, comp: dict[str, _Compiled],
                wanted: frozenset[str] | None) -> TraceEvent | None:
    """One line without its newline: an event, a BadLine, or None (not wanted)."""
    if not text:
        return BadLine("", lineno, None, None, text, "empty line")
    return _parse_line(text, lineno, comp, wanted)


# ------------------------------------------------------------- selective scan


def _chunks(fh: IO[str]) -> Iterator[tuple[str, bool]]:
    """Chunks that end on a newline, each starting with "\\n" so that "\\nname "
    marks a line start; the flag says the file ended without a newline."""
    tail = ""
    while True:
        data = fh.read(_CHUNK)
        if not data:
            if tail:
                yield "\n" + tail + "\n", True
            return
        data = tail + data
        cut = data.rfind("\n")
        if cut < 0:
            tail = data
            continue
        tail = data[cut + 1:]
        yield "\n" + data[: cut + 1], False


_SECOND = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
_LINE_SECOND = re.compile(r"\n(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")
_SEGMENT = 1 << 14  # characters per block of _no_such_second
_LINE_BY_LINE = 1 << 9  # a mixed block this small is read line by line
_REAL_SECOND: dict[str, bool] = {}


def _real_second(second: str) -> bool:
    real = _REAL_SECOND.get(second)
    if real is None:
        try:
            iso_seconds(second + "Z")
            real = True
        except ValueError:
            real = False
        _REAL_SECOND[second] = real
    return real


def _no_such_second(chunk: str) -> list[int]:
    """The newline before each line of an ISO chunk whose stamp has the grammar's shape
    but is no such time (day 00, month 13), which the full path reports on every line.

    A trace spends thousands of lines in one second, so the chunk is taken in blocks:
    when every line of a block starts with its first line's second (two counts, in C),
    one look at that second decides the block; a block where the second changes is
    halved until the halves are uniform, or small enough to read line by line. Lines
    without the shape are odd lines, found elsewhere."""
    bad: list[int] = []
    end = len(chunk) - 1
    blocks: list[tuple[int, int]] = []
    a = 0
    while a < end:
        b = chunk.find("\n", min(a + _SEGMENT, end))
        blocks.append((a, b))
        a = b
    while blocks:
        a, b = blocks.pop()
        second = chunk[a + 1:a + 20]
        if _SECOND.fullmatch(second) and chunk.count("\n", a, b) == chunk.count("\n" + second, a, b):
            if not _real_second(second):
                bad.extend(p for p in range(a, b) if chunk[p] == "\n")
            continue
        mid = chunk.find("\n", a + (b - a) // 2, b) if b - a > _LINE_BY_LINE else -1
        if mid > a:
            blocks += [(a, mid), (mid, b)]
        else:
            bad.extend(m.start() for m in _LINE_SECOND.finditer(chunk, a, b)
                       if not _real_second(m.group(1)))
    return bad


def _scan(path: Path, comp: dict[str, _Compiled], wanted: frozenset[str]
          ) -> Iterator[TraceEvent]:
    with _open_text(path) as fh:
        first = fh.readline()
        # The timestamp prefix is decided once per file from its first line; a line
        # in another form is an "odd" line below and read by the line parser.
        first_stamp = STAMP.match(first)
        iso = first_stamp is not None and first_stamp.group("iso") is not None
        sep = "Z " if iso else ":" if first_stamp is not None else "\n"
        fh.seek(0)
        finders = []
        for name in sorted(wanted):
            c = comp.get(name)
            if c is not None:
                lit = sep + name + " "
                finders.append((name, lit, re.compile(re.escape(lit) + c.fmt.pattern + "(?=\n)"),
                                c))
        # Odd lines: any line that does not start with this file's prefix and a known
        # event's name (unknown events, foreign text, empty lines, other prefixes). Found
        # in C like the wanted events, and handed to the line parser, so that nothing the
        # full parse reports as a BadLine is skipped here as "another event".
        prefix = _ISO_PREFIX if iso else _PID_PREFIX if sep == ":" else ""
        known = "|".join(re.escape(n) for n in sorted(comp, key=len, reverse=True))
        odd_rx = re.compile(r"\n(?!" + prefix + "(?:" + known + ") )")
        base = 0  # lines before this chunk
        for chunk, truncated in _chunks(fh):
            if truncated:  # QEMU writes whole lines; a missing newline means the file was cut
                yield BadLine("", base + 1, None, None, chunk[1:-1],
                              "last line has no newline (truncated)")
                return
            # (position, finder index or -1 for an odd line, match or None)
            hits: list[tuple[int, int, re.Match[str] | None]] = [
                (m.start(), -1, None) for m in odd_rx.finditer(chunk, 0, len(chunk) - 1)]
            if iso:
                hits.extend((p, -1, None) for p in _no_such_second(chunk))
            for idx, (_name, lit, rx, _c) in enumerate(finders):
                n = chunk.count(lit)
                if not n:
                    continue
                found: list[tuple[int, int, re.Match[str] | None]] = [
                    (m.start(), idx, m) for m in rx.finditer(chunk)]
                if len(found) != n:
                    starts = {p for p, _, _ in found}
                    p = chunk.find(lit)
                    while p >= 0:
                        if p not in starts:
                            found.append((p, idx, None))
                        p = chunk.find(lit, p + 1)
                hits.extend(found)
            hits.sort(key=lambda h: (h[0], h[1]))
            nlines = chunk.count("\n") - 1
            last_line = base + nlines
            line, prev = base, 0
            done = -1  # the last line handed to the line parser
            for pos, idx, m in hits:
                line += chunk.count("\n", prev, pos + 1)
                prev = pos + 1
                if line == done:
                    continue
                ls = pos + 1 if sep == "\n" or idx < 0 else chunk.rfind("\n", 0, pos) + 1
                if idx < 0 or m is None or (sep != "\n" and chunk.find(sep, ls) != pos):
                    if idx >= 0 and m is not None:
                        continue  # the literal inside another line's text: not a line start
                    # An odd line, or a wanted event whose arguments do not match: the
                    # line parser names the exact problem (or skips another known event).
                    done = line
                    ev = _line_event(chunk[ls:chunk.find("\n", ls)], line, comp, wanted)
                    if ev is not None:
                        yield ev
                    continue
                name, _lit, _rx, c = finders[idx]
                pid: int | None = None
                ts: float | None = None
                try:
                    if iso:
                        ts = iso_seconds(chunk[ls:pos + 1])
                    elif sep == ":":
                        # PID@SECONDS.MICROS: split by hand, a regex per event costs more.
                        at = chunk.find("@", ls, pos)
                        pid, ts = int(chunk[ls:at]), float(chunk[at + 1:pos])
                except ValueError:  # no such time (month 13): the line parser says so
                    done = line
                    ev = _line_event(chunk[ls:chunk.find("\n", ls)], line, comp, wanted)
                    if ev is not None:
                        yield ev
                    continue
                # A damaged line may hold this literal twice (a newline lost between two
                # lines, the %s argument taking the rest): the line is one event.
                done = line
                yield c.build(name, line, pid, ts, m.groups())
            base = last_line


# ------------------------------------------------------------------ public API


def iter_events(source: Source, *, names: Iterable[str] | None = None, strict: bool = False,
                trace_events: Path | str | None = None) -> Iterator[TraceEvent]:
    """Events of a trace, in file order, each with its 1-based line number.

    ``source``: a path (``.xz`` is decompressed on the fly) or an iterable of lines.
    ``names``: only these events (others are skipped unparsed; for a path this
    takes the fast chunked scan). ``strict``: raise :class:`TraceParseError` at the
    first bad line instead of yielding a :class:`BadLine`. ``trace_events``: the
    trace-events-all of the QEMU that wrote the trace (default: the installed one).
    """
    table = load_event_table(trace_events)
    comp = _compiled(table)
    wanted = frozenset(names) if names is not None else None
    label = str(source) if isinstance(source, str | Path) else "<lines>"
    if isinstance(source, str | Path):
        path = Path(source)
        if wanted is not None:
            events: Iterator[TraceEvent] = _scan(path, comp, wanted)
        else:
            events = _iter_file(path, comp)
    else:
        events = _iter_lines(source, comp, wanted)
    order = TimeOrder()
    for ev in events:
        if ev.timestamp is not None:
            ev = order.check(ev)
        if strict and type(ev) is BadLine:
            raise TraceParseError(label, ev)
        yield ev


def _iter_file(path: Path, comp: dict[str, _Compiled]) -> Iterator[TraceEvent]:
    with _open_text(path) as fh:
        yield from _iter_lines(fh, comp, None)


def parse_trace_file(path: str | Path, *, names: Iterable[str] | None = None,
                     strict: bool = False, trace_events: Path | str | None = None
                     ) -> list[TraceEvent]:
    """All events (or those in ``names``) of a trace file as a list."""
    return list(iter_events(path, names=names, strict=strict, trace_events=trace_events))


# ----------------------------------------------------------------- summaries


@dataclass(frozen=True)
class TraceSummary:
    """Counts over a parsed trace."""

    lines: int  # events + bad lines seen
    by_event: Counter[str]
    by_descriptor: Counter[str]  # vtd_inv_desc by QEMU's type word
    bad_lines: tuple[BadLine, ...]


def summarize(events: Iterable[TraceEvent]) -> TraceSummary:
    by_event: Counter[str] = Counter()
    by_desc: Counter[str] = Counter()
    bad: list[BadLine] = []
    n = 0
    for ev in events:
        n += 1
        if type(ev) is BadLine:
            bad.append(ev)
            continue
        by_event[ev.name] += 1
        if type(ev) is InvDesc:
            by_desc[ev.type] += 1
    return TraceSummary(n, by_event, by_desc, tuple(bad))


def count_events(source: Source, **kw: object) -> Counter[str]:
    """Events per name (bad lines under the key "<bad>")."""
    c: Counter[str] = Counter()
    for ev in iter_events(source, **kw):  # type: ignore[arg-type]
        c["<bad>" if type(ev) is BadLine else ev.name] += 1
    return c


def descriptor_type_counts(events: Iterable[TraceEvent]) -> Counter[str]:
    """vtd_inv_desc lines per QEMU type word (context-cache, iotlb, p-iotlb, wait...)."""
    return Counter(ev.type for ev in events if type(ev) is InvDesc)
