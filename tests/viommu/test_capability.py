"""CAP/ECAP decoding of real QEMU values, round trips and the config builder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.viommu import Cap, Ecap, VtdConfig, config_from_caps
from harness.viommu.capability import (
    QEMU_10_0_CAP,
    QEMU_10_0_ECAP,
    QEMU_11_1_CAP,
    QEMU_11_1_ECAP,
)


def test_qemu_10_0_cap() -> None:
    c = Cap.decode(QEMU_10_0_CAP)
    assert (c.nd, c.domain_ids) == (6, 65536)
    assert c.cm == 1 and c.rwbf == 0 and c.afl == 0
    assert c.sagaw == 0b00110 and c.supports_agaw(1) and c.supports_agaw(2)
    assert not c.supports_agaw(3)
    assert c.mgaw == 47 and c.mgaw_bits == 48
    assert c.fro == 0x22 and c.fault_record_offset == 0x220
    assert c.sllps == 3 and c.ss_2m and c.ss_1g
    assert c.psi == 1 and c.nfr == 0 and c.fault_records == 1
    assert c.mamv == 18 and c.dwd == 1 and c.drd == 1
    assert c.fl1gp == 1 and c.fl5lp == 0 and c.pi == 0
    assert c.esrtps == 0 and c.esirtps == 0 and c.reserved == 0


def test_qemu_10_0_ecap() -> None:
    e = Ecap.decode(QEMU_10_0_ECAP)
    assert e.qi == 1 and e.ir == 1 and e.pt == 1
    assert e.dt == 0 and e.eim == 0 and e.sc == 0
    assert e.iro == 0xF and e.iotlb_reg_offset == 0xF0
    assert e.mhmv == 15
    assert e.pasid == 1 and e.smts == 1 and e.flts == 1
    assert e.slts == 0 and e.nest == 0 and e.prs == 0 and e.srs == 0 and e.pss == 0
    assert e.reserved == 0


def test_qemu_11_1_caps() -> None:
    c = Cap.decode(QEMU_11_1_CAP)
    assert c.esrtps == 1
    assert Cap.decode(QEMU_11_1_CAP & ~(1 << 63)) == Cap.decode(QEMU_10_0_CAP)
    e = Ecap.decode(QEMU_11_1_ECAP)
    assert e.prs == 1 and e.dt == 1 and e.pds == 1 and e.nwfs == 1
    assert e.pss == 19 and e.pasid_bits == 20
    assert e.flts == 1 and e.slts == 0 and e.smts == 1
    assert e.reserved == 0


@given(st.integers(0, (1 << 64) - 1))
def test_cap_ecap_roundtrip(value: int) -> None:
    assert Cap.decode(value).encode() == value
    assert Ecap.decode(value).encode() == value


def test_default_config_is_qemu_plus_ss_nest_prs() -> None:
    cfg = VtdConfig()
    c, e = cfg.cap(), cfg.ecap()
    q = Cap.decode(QEMU_10_0_CAP)
    # The default CAP is QEMU 10.0's exactly (one fault record, CM=1, 48-bit).
    assert c.encode() == q.encode()
    assert e.smts and e.flts and e.slts and e.nest and e.prs and e.pds and e.pasid
    assert e.pss == 19 and e.dt == 1 and e.qi == 1 and e.iro == 0xF


def test_config_from_qemu_caps_reproduces_them() -> None:
    cfg = config_from_caps(QEMU_10_0_CAP, QEMU_10_0_ECAP)
    assert cfg.cap().encode() == QEMU_10_0_CAP
    # PSS/MHMV defaults agree; only bits the model knows are reproduced.
    assert cfg.ecap().encode() == QEMU_10_0_ECAP


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="aw_bits"):
        VtdConfig(aw_bits=40)
    with pytest.raises(ConfigError, match="unknown"):
        VtdConfig.from_kwargs(bogus=1)
    with pytest.raises(ConfigError, match="nfr"):
        VtdConfig(nfr=0)
