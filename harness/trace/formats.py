"""The event table: QEMU trace-event format strings turned into regexes.

Read at runtime from the installed QEMU's ``trace-events-all`` (one
``name(args) "printf format"`` per line), so a trace from another QEMU version
parses with that version's formats. Events the suite relies on but the file may
lack (QEMU 11.1's PASID-cache events, when parsing with a 10.0 table) come from
:data:`EXTRA_FORMATS`, used only when the file does not define the name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

DEFAULT_TRACE_EVENTS = Path("/usr/share/qemu/trace-events-all")

# QEMU 11.1 hw/i386/trace-events lines (PASID-cache emulation); identical text to
# upstream so the table built from an 11.1 file and this fallback agree.
EXTRA_FORMATS = "\n".join([
    'vtd_pasid_cache_reset(void) ""',
    'vtd_inv_desc_pasid_cache_gsi(void) ""',
    'vtd_inv_desc_pasid_cache_dsi(uint16_t domain) '
    '"Domain selective PC invalidation domain 0x%"PRIx16',
    'vtd_inv_desc_pasid_cache_psi(uint16_t domain, uint32_t pasid) '
    '"PASID selective PC invalidation domain 0x%"PRIx16" pasid 0x%"PRIx32',
    'vtd_pasid_cache_devsi(uint8_t bus, uint8_t dev, uint8_t fn) '
    '"Dev selective PC invalidation dev: %02"PRIx8":%02"PRIx8".%02"PRIx8',
])

# name(args) "fmt...": event properties (disable, tcg, vcpu) may precede the name.
_DECL = re.compile(r"^(?:(?:disable|tcg|vcpu|guest_mem)\s+)*(\w+)\((.*?)\)\s*(.*)$")
# Pieces of the C format expression: string literals and inttypes.h macros.
_PIECE = re.compile(r'"((?:[^"\\]|\\.)*)"|PRI([diouxX])(?:8|16|32|64|PTR|MAX)')
_CONV = re.compile(r"%(?P<flags>[-+ #0]*)(?P<width>\d*)(?:\.\d+)?"
                   r"(?:hh|h|ll|l|z|j|t|L|q)?(?P<conv>[diouxXscpfgeE%])")

Converter = Callable[[str], object]


def declarations_of(text: str, prefix: str) -> str:
    """The lines of a trace-events file that declare events named `prefix...`."""
    return "".join(ln for ln in text.splitlines(keepends=True)
                   if (m := _DECL.match(ln.strip())) is not None and m.group(1).startswith(prefix))


def _hex(s: str) -> int:
    return int(s, 16)


def _bool(s: str) -> bool:
    return s != "0"


def _str(s: str) -> str:
    return s


def _pointer(s: str) -> int:
    return 0 if s == "(nil)" else int(s, 16)


# Integers are bounded by 64 bits, the widest type a trace event prints (20 decimal, 22
# octal, 16 hex digits): a longer number is a damaged line, and int() of one over 4300
# digits would raise instead of the line being a BadLine.
_PATTERNS: dict[str, tuple[str, Converter]] = {
    "d": (r"-?\d{1,20}", int), "i": (r"-?\d{1,20}", int), "u": (r"\d{1,20}", int),
    "o": (r"[0-7]{1,22}", int), "x": (r"[0-9a-f]{1,16}", _hex), "X": (r"[0-9A-F]{1,16}", _hex),
    # %s is the only ambiguous conversion; lazily matched, the rest of the
    # format (anchored at end of line) settles where it stops.
    "s": (r".*?", _str), "c": (r".", _str), "p": (r"0x[0-9a-f]{1,16}|\(nil\)", _pointer),
    "f": (r"[-+0-9.einf]+", float), "g": (r"[-+0-9.einf]+", float),
    "e": (r"[-+0-9.einf]+", float), "E": (r"[-+0-9.EINF]+", float),
}


# Hex digits each fixed-width type can print (other types: 64 bits at most).
_HEX_DIGITS = {"uint8_t": 2, "int8_t": 2, "uint16_t": 4, "int16_t": 4, "uint32_t": 8, "int32_t": 8,
               "uint64_t": 16, "int64_t": 16, "hwaddr": 16, "dma_addr_t": 16}


@dataclass(frozen=True)
class EventFormat:
    """One trace event: its argument names/types and the regex matching the text
    QEMU prints after ``name `` (a full match of the rest of the line)."""

    name: str
    arg_names: tuple[str, ...]
    arg_types: tuple[str, ...]
    fmt: str  # the printf format with PRI macros resolved
    pattern: str  # regex source for the argument text, groups in argument order
    converters: tuple[Converter, ...]
    regex: re.Pattern[str]


def _c_string(expr: str) -> str:
    """Concatenate the literals of a C format expression, resolving PRIx64 & co."""
    out = []
    for lit, pri in _PIECE.findall(expr):
        out.append(pri if pri else bytes(lit, "ascii").decode("unicode_escape"))
    return "".join(out)


def _split_args(args: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    args = args.strip()
    if not args or args == "void":
        return (), ()
    names, types = [], []
    for decl in args.split(","):
        m = re.match(r"^(.*?)(\w+)\s*$", decl.strip())
        if not m:
            raise ValueError(f"cannot read argument {decl!r}")
        types.append(m.group(1).replace(" ", "").strip() or "int")
        names.append(m.group(2))
    return tuple(names), tuple(types)


def compile_format(name: str, args: str, fmt_expr: str) -> EventFormat:
    """Build the :class:`EventFormat` of one declaration."""
    arg_names, arg_types = _split_args(args)
    fmt = _c_string(fmt_expr)
    parts: list[str] = []
    converters: list[Converter] = []
    pos = 0
    for m in _CONV.finditer(fmt):
        parts.append(re.escape(fmt[pos:m.start()]))
        pos = m.end()
        conv = m.group("conv")
        if conv == "%":
            parts.append("%")
            continue
        pat, cv = _PATTERNS[conv]
        i = len(converters)
        digits = _HEX_DIGITS.get(arg_types[i]) if i < len(arg_types) and conv in "xX" else None
        if digits is not None:
            # printf cannot write more hex digits than the type holds: a longer number is
            # a damaged line, not a value wider than the field (a 17-digit uint64_t).
            pat = pat.replace("{1,16}", f"{{1,{digits}}}")
        if m.group("width") and "0" not in m.group("flags") and "-" not in m.group("flags"):
            pat = r" *(?:" + pat + ")"  # space-padded to a width
        if i < len(arg_types) and arg_types[i] == "bool":
            cv = _bool
        parts.append(f"({pat})")
        converters.append(cv)
    parts.append(re.escape(fmt[pos:]))
    pattern = "".join(parts)
    return EventFormat(name, arg_names[: len(converters)], arg_types[: len(converters)], fmt,
                       pattern, tuple(converters), re.compile(pattern))


@dataclass(frozen=True)
class EventTable:
    """Formats by event name, and where they came from."""

    formats: dict[str, EventFormat]
    source: str

    def __contains__(self, name: object) -> bool:
        return name in self.formats

    def get(self, name: str) -> EventFormat | None:
        return self.formats.get(name)


def parse_declarations(lines: Iterable[str], prefix: str = "") -> dict[str, EventFormat]:
    formats: dict[str, EventFormat] = {}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _DECL.match(line)
        if not m or not m.group(1).startswith(prefix):
            continue
        formats[m.group(1)] = compile_format(m.group(1), m.group(2), m.group(3))
    return formats


_TABLES: dict[tuple[str, str], EventTable] = {}


def load_event_table(path: Path | str | None = None, prefix: str = "vtd_") -> EventTable:
    """Event table for ``prefix`` events from a trace-events-all file (default: the
    installed QEMU's), plus :data:`EXTRA_FORMATS` for names it lacks. Cached."""
    p = Path(path) if path is not None else DEFAULT_TRACE_EVENTS
    key = (str(p), prefix)
    table = _TABLES.get(key)
    if table is None:
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError(
                f"cannot read QEMU trace event formats from {p}: {e}; install QEMU "
                "(package qemu-system-data) or pass trace_events=PATH") from e
        formats = parse_declarations(EXTRA_FORMATS.splitlines(), prefix)
        formats.update(parse_declarations(text.splitlines(), prefix))
        if not formats:
            raise ConfigError(f"{p} declares no {prefix}* trace events: is it trace-events-all?")
        table = EventTable(formats, str(p))
        _TABLES[key] = table
    return table
