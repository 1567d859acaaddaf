"""Invalidation / page-request descriptor layouts against docs/VTD_FACTS.md §6-§7 and real
descriptors taken from QEMU traces of a Linux 6.12 guest (tests/fixtures/traces)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.viommu.descriptors import (
    QEMU_10_RESERVED_MASKS,
    QEMU_10_SM_CAPS,
    ContextCacheGranularity,
    ContextCacheInv,
    DescType,
    DeviceTlbInv,
    IecGranularity,
    IecInv,
    InvalidDescriptor,
    InvDescriptor,
    IotlbGranularity,
    IotlbInv,
    PageGroupResponse,
    PageRequest,
    PasidCacheGranularity,
    PasidCacheInv,
    PasidDeviceTlbGranularity,
    PasidDeviceTlbInv,
    PasidIotlbGranularity,
    PasidIotlbInv,
    QiCaps,
    ResponseCode,
    WaitDesc,
    decode_inv_desc,
    decode_or_raise,
    desc_type_of,
    device_tlb_encode,
    device_tlb_range,
    iotlb_range,
    qemu10_divergent_bits,
    reserved_masks,
)
from harness.viommu.registers import IqeCode

U16 = st.integers(0, 0xFFFF)
PASID = st.integers(0, (1 << 20) - 1)
ADDR = st.integers(0, (1 << 52) - 1).map(lambda p: p << 12)
BIT = st.integers(0, 1)

DESCRIPTORS = st.one_of(
    st.builds(ContextCacheInv, g=st.sampled_from(ContextCacheGranularity), did=U16, sid=U16,
              fm=st.integers(0, 3)),
    st.builds(IotlbInv, g=st.sampled_from(IotlbGranularity), dw=BIT, dr=BIT, did=U16,
              am=st.integers(0, 63), ih=BIT, addr=ADDR),
    st.builds(DeviceTlbInv, pfsid=U16, mip=st.integers(0, 31), sid=U16, s=BIT, addr=ADDR),
    st.builds(IecInv, g=st.sampled_from(IecGranularity), im=st.integers(0, 31), iidx=U16),
    st.builds(WaitDesc, if_=BIT, sw=BIT, fn=BIT, pd=BIT, status_data=st.integers(0, 2**32 - 1),
              status_addr=st.integers(0, (1 << 62) - 1).map(lambda a: a << 2)),
    st.builds(PasidIotlbInv, g=st.sampled_from(PasidIotlbGranularity), did=U16, pasid=PASID,
              am=st.integers(0, 63), ih=BIT, addr=ADDR),
    st.builds(PasidCacheInv, g=st.sampled_from(PasidCacheGranularity), did=U16, pasid=PASID),
    st.builds(PasidDeviceTlbInv, mip=st.integers(0, 31), pfsid=U16, sid=U16, pasid=PASID,
              g=st.sampled_from(PasidDeviceTlbGranularity), s=BIT, addr=ADDR),
    st.builds(PageGroupResponse, pp=BIT, pdp=BIT, rc=st.sampled_from(ResponseCode), rid=U16,
              pasid=PASID, lpig=BIT, prgi=st.integers(0, 511),
              private_data=st.integers(0, 2**128 - 1)),
)


@given(DESCRIPTORS)
def test_round_trip_256(d: InvDescriptor) -> None:
    qw = d.encode(256)
    assert len(qw) == 4
    assert desc_type_of(qw[0]) == d.TYPE
    assert decode_inv_desc(*qw, width=256) == d
    assert len(d.to_bytes(256)) == 32


@given(DESCRIPTORS)
def test_round_trip_128(d: InvDescriptor) -> None:
    if d.ONLY_256 or (isinstance(d, PageGroupResponse) and d.private_data):
        with pytest.raises(ValueError):
            d.encode(128)
        return
    qw = d.encode(128)
    assert decode_inv_desc(*qw, width=128) == d


@given(DESCRIPTORS, st.integers(0, 255))
def test_every_reserved_bit_is_rejected(d: InvDescriptor, bit: int) -> None:
    """Setting any single reserved bit gives IQEI 4 and names exactly that bit."""
    masks = reserved_masks(d.TYPE, 256)
    word, b = divmod(bit, 64)
    if not masks[word] >> b & 1:
        return
    qw = list(d.encode(256))
    qw[word] |= 1 << b
    r = decode_inv_desc(*qw, width=256)
    assert isinstance(r, InvalidDescriptor)
    assert r.code == IqeCode.RESERVED_FIELD
    assert r.reserved_bits[word] == 1 << b


@pytest.mark.parametrize("t", list(DescType))
def test_reserved_masks_cover_exactly_the_undefined_bits(t: DescType) -> None:
    """Per type: field bits, type bits and reserved bits partition the descriptor."""
    masks = reserved_masks(t, 256)
    type_bits = 0xF | 0xE00
    assert masks[0] & type_bits == 0
    # Spot values from docs/VTD_FACTS.md §6.2 (qw0 reserved masks written out by hand).
    expected_qw0 = {
        DescType.CONTEXT_CACHE: 0xFFFC_0000_0000_F1C0,
        DescType.IOTLB: 0xFFFF_FFFF_0000_F100,
        DescType.DEVICE_TLB: 0x000F_0000_FFE0_01F0,
        DescType.IEC: 0xFFFF_0000_07FF_F1E0,
        DescType.WAIT: 0xFFFF_F100,  # PD defined (PDS=1 in the default caps)
        DescType.PASID_IOTLB: 0xFFF0_0000_0000_F1C0,
        DescType.PASID_CACHE: 0xFFF0_0000_0000_F1C0,
        DescType.PASID_DEVICE_TLB: 0,
        DescType.PAGE_GROUP_RESPONSE: 0xFFF0_0000_0000_01C0,
    }
    expected_qw1 = {
        DescType.CONTEXT_CACHE: 2**64 - 1, DescType.IOTLB: 0xF80, DescType.DEVICE_TLB: 0xFFE,
        DescType.IEC: 2**64 - 1, DescType.WAIT: 0x3, DescType.PASID_IOTLB: 0xF80,
        DescType.PASID_CACHE: 2**64 - 1, DescType.PASID_DEVICE_TLB: 0x7FE,
        DescType.PAGE_GROUP_RESPONSE: 0xFFFF_FFFF_FFFF_F003,
    }
    assert masks[0] == expected_qw0[t]
    assert masks[1] == expected_qw1[t]
    # 128-bit-format descriptors in a 256-bit queue: bits 255:128 reserved.
    if t != DescType.PAGE_GROUP_RESPONSE:
        assert masks[2] == masks[3] == 2**64 - 1
    else:
        assert masks[2] == masks[3] == 0  # private data


# ------------------------------------------------------------ error results


@pytest.mark.parametrize("t", [0x0, 0xA, 0xF, 0x11, 0x7F])
def test_unknown_types(t: int) -> None:
    qw0 = (t & 0xF) | ((t >> 4) << 9)
    r = decode_inv_desc(qw0, 0)
    assert isinstance(r, InvalidDescriptor)
    assert (r.code, r.desc_type) == (IqeCode.INVALID_TYPE, t)


def test_high_type_bits_make_a_known_type_unknown() -> None:
    """type[6:4] lives in bits 11:9: 0x201 is type 0x11, not a context-cache inv."""
    r = decode_inv_desc(0x201 | 0x10, 0)
    assert isinstance(r, InvalidDescriptor) and r.desc_type == 0x11


@pytest.mark.parametrize("d", [PasidIotlbInv(), PasidDeviceTlbInv()])
def test_256_only_descriptors_in_128_bit_queue(d: InvDescriptor) -> None:
    qw0, qw1 = d.encode(256)[:2]
    r = decode_inv_desc(qw0, qw1, width=128)
    assert isinstance(r, InvalidDescriptor) and r.code == IqeCode.INVALID_WIDTH


def test_pasid_cache_is_valid_in_either_width() -> None:
    d = PasidCacheInv(g=PasidCacheGranularity.PASID, did=3, pasid=7)
    assert decode_inv_desc(*d.encode(128), width=128) == d


@pytest.mark.parametrize("d", [PasidIotlbInv(), PasidCacheInv(), PasidDeviceTlbInv()])
def test_scalable_types_need_scalable_mode(d: InvDescriptor) -> None:
    r = decode_inv_desc(*d.encode(256), caps=QiCaps(scalable_mode=False))
    assert isinstance(r, InvalidDescriptor) and r.code == IqeCode.INVALID_TYPE


def test_page_group_response_needs_prs() -> None:
    d = PageGroupResponse(rid=0x18, prgi=5, lpig=1)
    assert decode_inv_desc(*d.encode(256), caps=QiCaps(prs=True)) == d
    r = decode_inv_desc(*d.encode(256), caps=QEMU_10_SM_CAPS)
    assert isinstance(r, InvalidDescriptor) and r.code == IqeCode.INVALID_TYPE


@pytest.mark.parametrize(("qw0", "name"), [
    (0x1, "G"),  # context-cache G=00
    (0x2, "G"),  # IOTLB G=00
    (0x6, "G"),  # PASID-IOTLB G=00
    (0x16, "G"),  # PASID-IOTLB G=01
    (0x27, "G"),  # PASID-cache G=10
    (0x2009, "RC"),  # page group response RC=2
])
def test_reserved_encodings(qw0: int, name: str) -> None:
    r = decode_inv_desc(qw0, 0)
    assert isinstance(r, InvalidDescriptor)
    assert r.code == IqeCode.RESERVED_FIELD
    assert f"reserved {name} encoding" in r.reason


def test_wait_pd_depends_on_pds() -> None:
    qw = WaitDesc(sw=1, pd=1, status_data=2, status_addr=0x1000).encode(256)
    assert isinstance(decode_inv_desc(*qw, caps=QiCaps(pds=True)), WaitDesc)
    r = decode_inv_desc(*qw, caps=QiCaps(pds=False))
    assert isinstance(r, InvalidDescriptor) and r.reserved_bits[0] == 0x80


def test_wait_with_neither_sw_nor_if_is_valid_per_spec() -> None:
    """QEMU 10.0 raises IQE for it; the spec does not (a plain ordering point)."""
    assert decode_inv_desc(0x5, 0) == WaitDesc()


def test_128_bit_queue_has_no_qw2() -> None:
    with pytest.raises(ValueError):
        decode_inv_desc(0x5, 0, 1, width=128)


def test_decode_or_raise() -> None:
    with pytest.raises(ValueError, match="IQEI 3"):
        decode_or_raise(0x0, 0)


# ------------------------------------------------ real descriptors (Linux 6.12)


def test_real_page_selective_pasid_iotlb() -> None:
    """`vtd_inv_desc ... type p-iotlb high 0xfffae040 low 0x50036` (strict unmap of one
    virtio-rng buffer page, first-stage domain 5, RID_PASID 0, IH=1: no table freed)."""
    d = decode_or_raise(0x50036, 0xFFFAE040, caps=QEMU_10_SM_CAPS)
    assert d == PasidIotlbInv(g=PasidIotlbGranularity.PAGE, did=5, pasid=0, am=0, ih=1,
                              addr=0xFFFAE000)
    assert isinstance(d, PasidIotlbInv) and d.range() == (0xFFFAE000, 0x1000)


def test_real_pasid_selective_pasid_iotlb() -> None:
    d = decode_or_raise(0x50026, 0x0, caps=QEMU_10_SM_CAPS)
    assert d == PasidIotlbInv(g=PasidIotlbGranularity.PASID, did=5, pasid=0)


def test_real_wait_with_status_write() -> None:
    """`type wait high 0x1052db4 low 0x200000025`: qi_submit_sync's wait, SW=1, QI_DONE=2."""
    d = decode_or_raise(0x200000025, 0x1052DB4, caps=QEMU_10_SM_CAPS)
    assert d == WaitDesc(sw=1, status_data=2, status_addr=0x1052DB4)


def test_real_iotlb_dsi_with_drain() -> None:
    """`type iotlb high 0x0 low 0xe2`: domain-selective, DW=DR=1 (CAP.DWD/DRD set), DID 0."""
    d = decode_or_raise(0xE2, 0x0, caps=QEMU_10_SM_CAPS)
    assert d == IotlbInv(g=IotlbGranularity.DOMAIN, dw=1, dr=1, did=0)


def test_real_iec_index() -> None:
    d = decode_or_raise(0xB00000014, 0, caps=QEMU_10_SM_CAPS)
    assert d == IecInv(g=IecGranularity.INDEX, im=0, iidx=0xB)


def test_linux_device_tlb_all() -> None:
    """Linux's "flush everything" device-TLB form: S=1, ADDR=0x7FFF_FFFF_FFFF_F000."""
    d = DeviceTlbInv(sid=0x18, s=1, addr=0x7FFF_FFFF_FFFF_F000)
    assert d.range() == (0, 1 << 64)
    assert decode_inv_desc(*d.encode(256)) == d


# ------------------------------------------------------------------ ranges


@pytest.mark.parametrize(("addr", "s", "expected"), [
    (0x1234_5000, 0, (0x1234_5000, 0x1000)),
    (0x1234_4000, 1, (0x1234_4000, 0x2000)),  # ADDR[12]=0: 8 KiB
    (0x1234_5000, 1, (0x1234_4000, 0x4000)),  # one trailing 1: 16 KiB
    (0x1234_7000, 1, (0x1234_0000, 0x10000)),  # 0x12347 ends ...0111: 64 KiB
    (0xF_F000, 1, (0, 0x20_0000)),  # eight ones: 2 MiB
])
def test_device_tlb_range(addr: int, s: int, expected: tuple[int, int]) -> None:
    assert device_tlb_range(addr, s) == expected


@given(st.integers(12, 64).flatmap(
    lambda k: st.tuples(st.integers(0, (1 << (64 - k)) - 1).map(lambda b: b << k),
                        st.just(1 << k))))
def test_device_tlb_encode_round_trip(rng: tuple[int, int]) -> None:
    base, size = rng
    addr, s = device_tlb_encode(base, size)
    assert device_tlb_range(addr, s) == (base, size)


def test_device_tlb_encode_rejects_unaligned() -> None:
    with pytest.raises(ValueError):
        device_tlb_encode(0x1000, 0x2000)
    with pytest.raises(ValueError):
        device_tlb_encode(0, 0x3000)


def test_iotlb_am_range() -> None:
    assert iotlb_range(0x20_3000, 0) == (0x20_3000, 0x1000)
    assert iotlb_range(0x20_3000, 9) == (0x20_0000, 0x20_0000)  # 512 pages aligned down
    d = IotlbInv(g=IotlbGranularity.PAGE, am=2, addr=0x7000)
    assert d.range() == (0x4000, 0x4000)


# ------------------------------------------------------------ page requests


PAGE_REQUESTS = st.builds(
    PageRequest, pp=BIT, pdp=BIT, rid=U16, pasid=PASID, er=BIT, pmr=BIT, rd=BIT, wr=BIT,
    lpig=BIT, prgi=st.integers(0, 511), addr=ADDR, private_data=st.integers(0, 2**128 - 1))


@given(PAGE_REQUESTS)
def test_page_request_round_trip(pr: PageRequest) -> None:
    assert PageRequest.decode(*pr.encode()) == pr
    assert PageRequest.from_bytes(pr.to_bytes()) == pr


def test_page_request_layout() -> None:
    """A write fault at 0x7f12_3456_7000, PASID 0x42, RID 00:03.0, group 5, last."""
    pr = PageRequest(pp=1, rid=0x18, pasid=0x42, wr=1, lpig=1, prgi=5, addr=0x7F12_3456_7000)
    qw0, qw1, qw2, qw3 = pr.encode()
    assert qw0 == 0x1 | 1 << 8 | 0x18 << 16 | 0x42 << 32
    assert qw1 == 0x2 | 0x4 | 5 << 3 | 0x7F12_3456_7000
    assert (qw2, qw3) == (0, 0)
    resp = pr.response(ResponseCode.INVALID_REQUEST)
    assert resp == PageGroupResponse(pp=1, rc=ResponseCode.INVALID_REQUEST, rid=0x18,
                                     pasid=0x42, lpig=1, prgi=5)
    assert pr.needs_response and not pr.is_stop_marker


def test_stop_marker_needs_no_response() -> None:
    pr = PageRequest(pp=1, pasid=3, lpig=1)
    assert pr.is_stop_marker and not pr.needs_response


def test_private_data_echoed_and_forces_response() -> None:
    pr = PageRequest(pdp=1, rd=1, private_data=0xABCD << 64 | 0x1234)
    assert pr.needs_response  # VT-d 3.x: private data needs a response without LPIG
    assert pr.response().private_data == 0xABCD << 64 | 0x1234


def test_page_request_from_bytes_size() -> None:
    with pytest.raises(ValueError):
        PageRequest.from_bytes(b"\0" * 16)


# -------------------------------------------------------- QEMU divergences


def test_qemu_divergences_are_data_only() -> None:
    """PFSID (0x3, 0x8) is the only place QEMU 10.0's masks exceed the spec's under its
    own caps (PDS=0 makes PD reserved in both); with PDS=1, PD diverges too."""
    diverging = {t: qemu10_divergent_bits(t) for t in QEMU_10_RESERVED_MASKS}
    pfsid = 0xFFF0_0000_0000_F000
    assert diverging[DescType.DEVICE_TLB] == (pfsid, 0)
    assert diverging[DescType.PASID_DEVICE_TLB] == (pfsid, 0)
    assert all(v == (0, 0) for t, v in diverging.items()
               if t not in (DescType.DEVICE_TLB, DescType.PASID_DEVICE_TLB))
    assert qemu10_divergent_bits(DescType.WAIT, QiCaps(pds=True)) == (0x80, 0)
    # ...and the decoder itself follows the spec: a PFSID QEMU would reject decodes.
    d = DeviceTlbInv(pfsid=0x1234, sid=0x18)
    assert decode_inv_desc(*d.encode(128), width=128, caps=QEMU_10_SM_CAPS) == d


def test_qemu_masks_are_never_looser_than_spec() -> None:
    for t, q in QEMU_10_RESERVED_MASKS.items():
        spec = reserved_masks(t, 128, QEMU_10_SM_CAPS)
        assert spec[0] & ~q.qw0 == 0, t
        assert spec[1] & ~q.qw1 == 0, t
