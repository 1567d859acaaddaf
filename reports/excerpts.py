"""Excerpts of trace.log / console.log around the lines findings point at, so the
report carries the evidence itself (the bundle may not travel with the page)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from reports.bundle import mask_secrets, mask_secrets_keep_lines

CONTEXT = 3
# Above this, read line by line (a trace can be gigabytes). Per-line masking is then
# enough: only the console can hold a multi-line key, and consoles are small.
WHOLE_FILE_LIMIT = 32 * 1024 * 1024
MAX_LINE = 2000

# Terminal escapes and other control characters would show as garbage in HTML and
# are illegal in XML 1.0.
# CSI sequences (ESC [ ... final), else ESC plus intermediates and one final byte
# (ESC c, the reset SeaBIOS sends; ESC 7; ESC ( B).
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[ -/]*[0-~])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_line(text: str) -> str:
    text = _CONTROL.sub("", _ANSI.sub("", text.rstrip("\r\n")))
    return text if len(text) <= MAX_LINE else text[:MAX_LINE] + " [...]"


@dataclass(frozen=True)
class ExcerptLine:
    number: int  # 1-based
    text: str
    referenced: bool


@dataclass(frozen=True)
class Excerpt:
    lines: tuple[ExcerptLine, ...]

    @property
    def start(self) -> int:
        return self.lines[0].number

    @property
    def end(self) -> int:
        return self.lines[-1].number


@dataclass(frozen=True)
class SourceExcerpts:
    role: str  # "trace" | "console": the anchor prefix
    filename: str
    present: bool
    total_lines: int
    excerpts: tuple[Excerpt, ...]
    past_end: tuple[int, ...]  # referenced lines the file does not have

    def has(self, line: int) -> bool:
        return self.present and 1 <= line <= self.total_lines


def _windows(refs: set[int], total: int, context: int) -> list[range]:
    """Merge each ref's ±context window with overlapping/adjacent neighbours."""
    out: list[range] = []
    for n in sorted(refs):
        lo, hi = max(1, n - context), min(total, n + context)
        if out and lo <= out[-1].stop:
            out[-1] = range(out[-1].start, max(out[-1].stop, hi + 1))
        else:
            out.append(range(lo, hi + 1))
    return out


def split_lines(text: str) -> list[str]:
    """Lines as `grep -n` numbers them: split on \\n only. A console is full of lone
    \\r (str.splitlines and universal newlines would count those as lines and shift
    every number after them)."""
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _read_lines(path: Path, wanted: set[int]) -> tuple[dict[int, str], int]:
    if path.stat().st_size <= WHOLE_FILE_LIMIT:
        text = mask_secrets_keep_lines(path.read_bytes().decode(errors="replace"))
        lines = split_lines(text)
        return {n: lines[n - 1] for n in wanted if n <= len(lines)}, len(lines)
    got: dict[int, str] = {}
    total = 0
    with path.open(errors="replace", newline="\n") as fh:
        for total, line in enumerate(fh, 1):  # noqa: B007 - total is the count after the loop
            if total in wanted:
                got[total] = mask_secrets(line)
    return got, total


def build_excerpts(
    role: str, filename: str, path: Path | None, refs: Iterable[int], context: int = CONTEXT
) -> SourceExcerpts:
    refs = {int(r) for r in refs if int(r) >= 1}
    if path is None or not path.exists():
        return SourceExcerpts(role, filename, False, 0, (), tuple(sorted(refs)))
    # Reading needs the window before knowing the file length; ask for the widest
    # window and trim to what exists.
    wanted = {n for r in refs for n in range(max(1, r - context), r + context + 1)}
    got, total = _read_lines(path, wanted)
    excerpts = tuple(
        Excerpt(tuple(ExcerptLine(n, clean_line(got[n]), n in refs) for n in window))
        for window in _windows({r for r in refs if r <= total}, total, context)
    )
    return SourceExcerpts(role, filename, True, total, excerpts,
                          tuple(sorted(r for r in refs if r > total)))
