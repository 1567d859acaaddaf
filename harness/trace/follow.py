"""One pass over a trace while QEMU is still writing it.

A run judges the trace more than once (while a workload holds its mappings, and at
the end), on this machine or over SFTP on a lab host. The follower opens the trace
once and, at each `catch_up()`, reads only the whole lines appended since the last
one, parses each line once and hands every sink the events it asked for. A line that
does not parse raises TraceParseError naming the file and line: it is never skipped.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Protocol

from .events import BadLine, TraceEvent
from .formats import load_event_table
from .parser import TimeOrder, TraceParseError, _compiled, _parse_line

_READ = 8 << 20


class EventSink(Protocol):
    """Something that consumes trace events, in file order."""

    @property
    def wants(self) -> frozenset[str] | None:
        """The event names it needs (None: every event)."""
        ...

    def feed(self, events: Iterable[TraceEvent]) -> None: ...


class TraceFollower:
    def __init__(self, stream: BinaryIO, label: str, formats: Path | None, sinks: Iterable[EventSink]) -> None:
        self.stream, self.label = stream, label
        self.sinks = list(sinks)
        self.comp = _compiled(load_event_table(formats))
        wants = [s.wants for s in self.sinks]
        self.wanted: frozenset[str] | None = None if any(w is None for w in wants) else frozenset().union(
            *[w for w in wants if w is not None])
        self.lines = 0  # whole lines consumed so far
        self.order = TimeOrder()  # the same time-order check as iter_events
        self._tail = b""  # bytes after the last newline: a line QEMU is still writing

    def catch_up(self) -> int:
        """Consume what QEMU appended since the last call; the number of new lines."""
        before = self.lines
        while True:
            data = self.stream.read(_READ)
            if not data:
                break
            data = self._tail + data
            cut = data.rfind(b"\n") + 1
            self._tail = data[cut:]
            if cut:
                self._dispatch(data[:cut].decode(errors="replace"))
        return self.lines - before

    def finish(self) -> None:
        """The trace is complete (QEMU stopped): a last line without a newline is cut."""
        self.catch_up()
        if self._tail:
            raise TraceParseError(self.label, BadLine("", self.lines + 1, None, None,
                                                      self._tail.decode(errors="replace"),
                                                      "last line has no newline (truncated)"))

    def _dispatch(self, text: str) -> None:
        events: list[TraceEvent] = []
        comp, wanted, lineno = self.comp, self.wanted, self.lines
        for line in io.StringIO(text, newline="\n"):
            lineno += 1
            body = line[:-1]
            if not body:
                raise TraceParseError(self.label, BadLine("", lineno, None, None, line, "empty line"))
            ev = _parse_line(body, lineno, comp, wanted)
            if ev is None:
                continue
            if ev.timestamp is not None:
                ev = self.order.check(ev)
            if type(ev) is BadLine:
                raise TraceParseError(self.label, ev)
            events.append(ev)
        self.lines = lineno
        for sink in self.sinks:
            w = sink.wants
            sink.feed(events if w is None else [e for e in events if e.name in w])


class EventLog:
    """An EventSink that keeps the events of some names, in file order."""

    def __init__(self, *names: str) -> None:
        self._names = frozenset(names)
        self.events: list[TraceEvent] = []

    @property
    def wants(self) -> frozenset[str]:
        return self._names

    def feed(self, events: Iterable[TraceEvent]) -> None:
        self.events.extend(events)
