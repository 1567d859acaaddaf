"""Bit-field helpers shared by every structure decoder.

Structures are frozen dataclasses whose fields carry their bit position in the
field metadata (``bits(hi, lo)``); one generic encoder/decoder then serves CAP,
ECAP, root/context/PASID entries and descriptors, so a layout is written down
exactly once, in spec terms.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def bits(hi: int, lo: int, default: int = 0) -> Any:
    """A dataclass field holding bits ``hi:lo`` (inclusive) of the raw value."""
    if hi < lo:
        raise ValueError(f"bad bit range {hi}:{lo}")
    return dataclasses.field(default=default, metadata={"bits": (hi, lo)})


def addr_bits(hi: int, lo: int, base: int = 0, default: int = 0) -> Any:
    """A field holding an address in bits ``hi:lo`` kept in place (not shifted down to
    bit 0): the dataclass value is the address itself, e.g. a 4 KiB-aligned table
    pointer. ``base`` is the first bit of the qword holding it (qw2 -> 128)."""
    if hi < lo or lo < base:
        raise ValueError(f"bad bit range {hi}:{lo} (base {base})")
    return dataclasses.field(default=default, metadata={"bits": (hi, lo), "addr": base})


def mask(hi: int, lo: int) -> int:
    """Mask of bits ``hi:lo`` inclusive."""
    return ((1 << (hi - lo + 1)) - 1) << lo


def field(value: int, hi: int, lo: int) -> int:
    """Extract bits ``hi:lo`` of ``value``."""
    return (value >> lo) & ((1 << (hi - lo + 1)) - 1)


def layout(cls: type) -> list[tuple[str, int, int, int]]:
    """(name, hi, lo, addr_base) for every bit field of a bit-field dataclass, in order;
    addr_base is -1 for plain fields."""
    cached = _LAYOUTS.get(cls)
    if cached is None:
        cached = [
            (f.name, *f.metadata["bits"], f.metadata.get("addr", -1))
            for f in dataclasses.fields(cls)
            if "bits" in f.metadata
        ]
        _LAYOUTS[cls] = cached
    return cached


_LAYOUTS: dict[type, list[tuple[str, int, int, int]]] = {}


def defined_mask(cls: type) -> int:
    """Union of the masks of all named fields of ``cls``."""
    m = 0
    for _name, hi, lo, _a in layout(cls):
        m |= mask(hi, lo)
    return m


def decode_fields(cls: type[T], value: int, **extra: Any) -> T:
    """Build ``cls`` from a raw integer using its bit-field layout."""
    kwargs = {
        name: ((value & mask(hi, lo)) >> base)
        if base >= 0
        else (value >> lo) & ((1 << (hi - lo + 1)) - 1)
        for name, hi, lo, base in layout(cls)
    }
    kwargs.update(extra)
    return cls(**kwargs)


def encode_fields(obj: Any) -> int:
    """Raw integer of a bit-field dataclass; values wider than their field raise."""
    value = 0
    for name, hi, lo, base in layout(type(obj)):
        v = int(getattr(obj, name))
        if base >= 0:
            if v < 0 or v & ~mask(hi - base, lo - base):
                raise ValueError(
                    f"{type(obj).__name__}.{name}={v:#x} is not an address in bits {hi}:{lo}"
                )
            value |= v << base
            continue
        width = hi - lo + 1
        if v < 0 or v >> width:
            raise ValueError(f"{type(obj).__name__}.{name}={v:#x} does not fit bits {hi}:{lo}")
        value |= v << lo
    return value


def split_qwords(value: int, count: int) -> tuple[int, ...]:
    """Split a wide little-endian value into ``count`` 64-bit words (qw0 first)."""
    return tuple((value >> (64 * i)) & 0xFFFF_FFFF_FFFF_FFFF for i in range(count))


def join_qwords(*qwords: int) -> int:
    """Inverse of :func:`split_qwords`."""
    value = 0
    for i, q in enumerate(qwords):
        value |= (q & 0xFFFF_FFFF_FFFF_FFFF) << (64 * i)
    return value


def haw_mask(haw: int, top: int = 63) -> int:
    """Mask of address bits ``top:haw`` (bits at/above the host address width)."""
    if haw > top:
        return 0
    return mask(top, haw)
