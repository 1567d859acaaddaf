"""The VT-d codecs on any bits: QI descriptors, page requests and responses, root,
context and PASID entries decode to a value (or an InvalidDescriptor), never raise, and
encode(decode(x)) gives x back wherever an encoder exists."""

from __future__ import annotations

from typing import Literal

import pytest
from fuzzcount import counted, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from harness.viommu.descriptors import (
    QEMU_10_SM_CAPS,
    InvalidDescriptor,
    InvDescriptor,
    PageRequest,
    QiCaps,
    decode_inv_desc,
    reserved_masks,
)
from harness.viommu.pasid import PasidDirEntry, PasidEntry
from harness.viommu.root_context import (
    LegacyContextEntry,
    LegacyRootEntry,
    ScalableContextEntry,
    ScalableRootEntry,
)

pytestmark = pytest.mark.fuzz

qword = st.integers(0, (1 << 64) - 1)
# Any bits, and bits around the type fields so that every type is reached often.
typed_qw0 = st.builds(lambda t, hi, rest: (rest & ~0xF00F) | (hi << 9) | t,
                      st.integers(0, 15), st.integers(0, 7), qword)
caps = st.builds(QiCaps, st.booleans(), st.booleans(), st.booleans())


@fuzz_settings()
@given(st.one_of(qword, typed_qw0), qword, qword, qword, st.sampled_from([128, 256]), caps)
@counted
def test_any_descriptor_decodes_and_a_valid_one_round_trips(q0: int, q1: int, q2: int, q3: int,
                                                            width: Literal[128, 256], c: QiCaps) -> None:
    qws = (q0, q1, q2, q3) if width == 256 else (q0, q1, 0, 0)
    d = decode_inv_desc(*qws, width=width, caps=c)
    assert isinstance(d, InvDescriptor | InvalidDescriptor)
    if isinstance(d, InvDescriptor):
        # Reserved bits are zero in a valid descriptor, so encoding gives the bits back.
        assert d.encode(width) == qws[: width // 64]
        assert all(q & m == 0 for q, m in zip(qws, reserved_masks(d.desc_type, width, c), strict=False))


@fuzz_settings()
@given(st.one_of(qword, typed_qw0), qword)
@counted
def test_a_traced_descriptor_decodes_as_the_qi_check_decodes_it(low: int, high: int) -> None:
    """What the QI check does with a vtd_inv_desc line's two words (qw2/qw3 untraced)."""
    for width in (128, 256):
        assert isinstance(decode_inv_desc(low, high, width=width, caps=QEMU_10_SM_CAPS),
                          InvDescriptor | InvalidDescriptor)


@fuzz_settings()
@given(qword, qword, qword, qword)
@counted
def test_page_requests_decode_and_round_trip(q0: int, q1: int, q2: int, q3: int) -> None:
    r = PageRequest.decode(q0, q1, q2, q3)
    assert PageRequest.decode(*r.encode()) == r  # decode . encode is the identity on what decode gives
    assert PageRequest.from_bytes(r.to_bytes()) == r
    resp = r.response()
    assert decode_inv_desc(*resp.encode(256), width=256) == resp  # the response is a valid descriptor


@fuzz_settings()
@given(qword, qword, qword, qword)
@counted
def test_root_context_and_pasid_entries_decode_and_round_trip(q0: int, q1: int, q2: int, q3: int) -> None:
    for cls, qws in ((LegacyRootEntry, (q0, q1)), (LegacyContextEntry, (q0, q1)),
                     (ScalableRootEntry, (q0, q1)), (ScalableContextEntry, (q0, q1, q2, q3)),
                     (PasidEntry, (q0, q1, q2, q3, 0, 0, 0, 0))):
        e = cls.decode(*qws)
        assert cls.decode(*e.encode()) == e
    d = PasidDirEntry.decode(q0)
    assert PasidDirEntry.decode(d.encode()) == d
