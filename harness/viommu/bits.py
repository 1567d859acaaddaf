"""Bit-field helpers shared by every structure decoder.

Structures are frozen dataclasses whose fields carry their bit position in the
field metadata (``bits(hi, lo)``); one generic encoder/decoder then serves CAP,
ECAP, root/context/PASID entries, invalidation and page-request descriptors, so a
layout is written down exactly once, in spec terms. Bit numbers are absolute over
the structure (qw1 bit 0 = bit 64), as the VT-d specification's tables give them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

T = TypeVar("T")
QWORD = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """Where one field lives: its bit ranges (hi, lo), the value's low bits first;
    ``addr_base`` >= 0 for an address kept in place (the first bit of its qword);
    ``enum`` for a field whose encodings are named (others are reserved)."""

    name: str
    segments: tuple[tuple[int, int], ...]
    addr_base: int = -1
    enum: type[IntEnum] | None = None

    @property
    def mask(self) -> int:
        m = 0
        for hi, lo in self.segments:
            m |= mask(hi, lo)
        return m

    def get(self, raw: int) -> int:
        """The field's value in ``raw`` (an address stays in place within its qword)."""
        if self.addr_base >= 0:
            hi, lo = self.segments[0]
            return (raw & mask(hi, lo)) >> self.addr_base
        value, shift = 0, 0
        for hi, lo in self.segments:
            width = hi - lo + 1
            value |= ((raw >> lo) & ((1 << width) - 1)) << shift
            shift += width
        return value

    def put(self, value: int, owner: str = "") -> int:
        """``value`` placed in the field's bits; a value wider than the field raises."""
        name = f"{owner}.{self.name}" if owner else self.name
        if self.addr_base >= 0:
            hi, lo = self.segments[0]
            if value < 0 or value & ~mask(hi - self.addr_base, lo - self.addr_base):
                raise ValueError(f"{name}={value:#x} is not an address in bits {hi}:{lo}")
            return value << self.addr_base
        where = ", ".join(f"{hi}:{lo}" for hi, lo in self.segments)
        total = sum(hi - lo + 1 for hi, lo in self.segments)
        if value < 0 or value >> total:
            raise ValueError(f"{name}={value:#x} does not fit bits {where}")
        raw, shift = 0, 0
        for hi, lo in self.segments:
            width = hi - lo + 1
            raw |= ((value >> shift) & ((1 << width) - 1)) << lo
            shift += width
        return raw


def _check(hi: int, lo: int) -> None:
    if hi < lo:
        raise ValueError(f"bad bit range {hi}:{lo}")


def bits(hi: int, lo: int, default: Any = 0, *, enum: type[IntEnum] | None = None) -> Any:
    """A dataclass field holding bits ``hi:lo`` (inclusive) of the raw value; with
    ``enum`` the decoded value is that enum's member (a value it lacks is reserved)."""
    _check(hi, lo)
    return dataclasses.field(default=default, metadata={"bits": ((hi, lo),), "enum": enum})


def split_bits(*segments: tuple[int, int], default: int = 0) -> Any:
    """A field stored in several bit ranges, the value's low bits in the first, e.g.
    PFSID[3:0] in bits 15:12 and PFSID[15:4] in bits 63:52."""
    if not segments:
        raise ValueError("a field needs at least one bit range")
    for hi, lo in segments:
        _check(hi, lo)
    return dataclasses.field(default=default, metadata={"bits": tuple(segments)})


def addr_bits(hi: int, lo: int, base: int = 0, default: int = 0) -> Any:
    """A field holding an address in bits ``hi:lo`` kept in place (not shifted down to
    bit 0): the dataclass value is the address itself, e.g. a 4 KiB-aligned table
    pointer. ``base`` is the first bit of the qword holding it (qw2 -> 128)."""
    if hi < lo or lo < base:
        raise ValueError(f"bad bit range {hi}:{lo} (base {base})")
    return dataclasses.field(default=default, metadata={"bits": ((hi, lo),), "addr": base})


def mask(hi: int, lo: int) -> int:
    """Mask of bits ``hi:lo`` inclusive."""
    return ((1 << (hi - lo + 1)) - 1) << lo


def field(value: int, hi: int, lo: int) -> int:
    """Extract bits ``hi:lo`` of ``value``."""
    return (value >> lo) & ((1 << (hi - lo + 1)) - 1)


def layout(cls: type) -> list[FieldSpec]:
    """The bit fields of a bit-field dataclass, in declaration order."""
    cached = _LAYOUTS.get(cls)
    if cached is None:
        cached = [
            FieldSpec(f.name, f.metadata["bits"], f.metadata.get("addr", -1),
                      f.metadata.get("enum"))
            for f in dataclasses.fields(cls)
            if "bits" in f.metadata
        ]
        _LAYOUTS[cls] = cached
    return cached


_LAYOUTS: dict[type, list[FieldSpec]] = {}


def defined_mask(cls: type) -> int:
    """Union of the masks of all named fields of ``cls``."""
    m = 0
    for spec in layout(cls):
        m |= spec.mask
    return m


# Per class, each field as (name, shift, mask-after-shift, spec or None): the decoders
# run in the walk's PASID-cache misses, so the one-range fields skip FieldSpec.get.
_READERS: dict[type, list[tuple[str, int, int, FieldSpec | None]]] = {}


def _readers(cls: type) -> list[tuple[str, int, int, FieldSpec | None]]:
    cached = _READERS.get(cls)
    if cached is None:
        cached = []
        for spec in layout(cls):
            hi, lo = spec.segments[0]
            if len(spec.segments) > 1:
                cached.append((spec.name, 0, 0, spec))
            elif spec.addr_base >= 0:
                cached.append((spec.name, spec.addr_base, mask(hi, lo) >> spec.addr_base, None))
            else:
                cached.append((spec.name, lo, (1 << (hi - lo + 1)) - 1, None))
        _READERS[cls] = cached
    return cached


def field_values(cls: type, value: int) -> dict[str, int]:
    """Every field of ``cls`` read from the raw integer ``value``, as plain integers."""
    return {name: (value >> shift) & m if spec is None else spec.get(value)
            for name, shift, m, spec in _readers(cls)}


def decode_fields(cls: type[T], value: int, **extra: Any) -> T:
    """Build ``cls`` from a raw integer using its bit-field layout; an enum field holding
    a value its enum lacks raises ValueError."""
    kwargs: dict[str, Any] = field_values(cls, value)
    for spec in layout(cls):
        if spec.enum is not None:
            kwargs[spec.name] = spec.enum(kwargs[spec.name])
    kwargs.update(extra)
    return cls(**kwargs)


def encode_fields(obj: Any) -> int:
    """Raw integer of a bit-field dataclass; values wider than their field raise."""
    value = 0
    for name, shift, m, spec in _readers(type(obj)):
        v = int(getattr(obj, name))
        if spec is None and v >= 0 and not v & ~m:  # fits: the common case, without a call
            value |= v << shift
        else:
            value |= (spec or _spec(type(obj), name)).put(v, type(obj).__name__)
    return value


def _spec(cls: type, name: str) -> FieldSpec:
    return next(s for s in layout(cls) if s.name == name)


def split_qwords(value: int, count: int) -> tuple[int, ...]:
    """Split a wide little-endian value into ``count`` 64-bit words (qw0 first)."""
    return tuple((value >> (64 * i)) & QWORD for i in range(count))


def join_qwords(*qwords: int) -> int:
    """Inverse of :func:`split_qwords`."""
    value = 0
    for i, q in enumerate(qwords):
        value |= (q & QWORD) << (64 * i)
    return value


def haw_mask(haw: int, top: int = 63) -> int:
    """Mask of address bits ``top:haw`` (bits at/above the host address width)."""
    if haw > top:
        return 0
    return mask(top, haw)
