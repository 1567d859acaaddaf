"""CAP_REG / ECAP_REG (docs/VTD_FACTS.md §1.2, §1.3) and the config that produces them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from harness.errors import ConfigError

from .bits import bits, decode_fields, defined_mask, encode_fields

_U64 = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True)
class Cap:
    """Capability register. ``reserved`` keeps bits no field names, so decode/encode round-trip."""

    nd: int = bits(2, 0)
    afl: int = bits(3, 3)
    rwbf: int = bits(4, 4)
    plmr: int = bits(5, 5)
    phmr: int = bits(6, 6)
    cm: int = bits(7, 7)
    sagaw: int = bits(12, 8)
    mgaw: int = bits(21, 16)
    zlr: int = bits(22, 22)
    isoch: int = bits(23, 23)
    fro: int = bits(33, 24)
    sllps: int = bits(37, 34)
    psi: int = bits(39, 39)
    nfr: int = bits(47, 40)
    mamv: int = bits(53, 48)
    dwd: int = bits(54, 54)
    drd: int = bits(55, 55)
    fl1gp: int = bits(56, 56)
    pi: int = bits(59, 59)
    fl5lp: int = bits(60, 60)
    ecmds: int = bits(61, 61)
    esirtps: int = bits(62, 62)
    esrtps: int = bits(63, 63)
    reserved: int = 0

    @classmethod
    def decode(cls, value: int) -> Cap:
        return decode_fields(cls, value, reserved=value & ~defined_mask(cls) & _U64)

    def encode(self) -> int:
        return encode_fields(self) | self.reserved

    # -- derived quantities -----------------------------------------------------------
    @property
    def domain_ids(self) -> int:
        return 1 << (4 + 2 * self.nd)

    @property
    def fault_records(self) -> int:
        return self.nfr + 1

    @property
    def fault_record_offset(self) -> int:
        return self.fro * 16

    @property
    def mgaw_bits(self) -> int:
        return self.mgaw + 1

    def supports_agaw(self, aw: int) -> bool:
        """AW code k (0: 30-bit/2-level ... 3: 57-bit/5-level) listed in SAGAW."""
        return 0 <= aw <= 4 and bool(self.sagaw >> aw & 1)

    @property
    def ss_2m(self) -> bool:
        return bool(self.sllps & 1)

    @property
    def ss_1g(self) -> bool:
        return bool(self.sllps & 2)


@dataclass(frozen=True, slots=True)
class Ecap:
    """Extended capability register."""

    c: int = bits(0, 0)
    qi: int = bits(1, 1)
    dt: int = bits(2, 2)
    ir: int = bits(3, 3)
    eim: int = bits(4, 4)
    pt: int = bits(6, 6)
    sc: int = bits(7, 7)
    iro: int = bits(17, 8)
    mhmv: int = bits(23, 20)
    mts: int = bits(25, 25)
    nest: int = bits(26, 26)
    prs: int = bits(29, 29)
    ers: int = bits(30, 30)
    srs: int = bits(31, 31)
    nwfs: int = bits(33, 33)
    eafs: int = bits(34, 34)
    pss: int = bits(39, 35)
    pasid: int = bits(40, 40)
    dit: int = bits(41, 41)
    pds: int = bits(42, 42)
    smts: int = bits(43, 43)
    vcs: int = bits(44, 44)
    slads: int = bits(45, 45)
    slts: int = bits(46, 46)
    flts: int = bits(47, 47)
    smpwcs: int = bits(48, 48)
    rps: int = bits(49, 49)
    pms: int = bits(51, 51)
    adms: int = bits(52, 52)
    rprivs: int = bits(53, 53)
    reserved: int = 0

    @classmethod
    def decode(cls, value: int) -> Ecap:
        return decode_fields(cls, value, reserved=value & ~defined_mask(cls) & _U64)

    def encode(self) -> int:
        return encode_fields(self) | self.reserved

    @property
    def iotlb_reg_offset(self) -> int:
        """IVA_REG offset; IOTLB_REG is 8 bytes above."""
        return self.iro * 16

    @property
    def pasid_bits(self) -> int:
        return self.pss + 1 if self.pasid else 0


@dataclass(frozen=True, slots=True)
class VtdConfig:
    """Model configuration, named after QEMU's intel-iommu properties where one exists.

    Defaults: QEMU 10.0 ``x-scalable-mode=on,x-flts=on,caching-mode=on,aw-bits=48`` with
    x-pasid-mode, plus second-stage, nesting, page requests and device-TLB so one model
    speaks for lab hardware too.
    """

    aw_bits: int = 48
    scalable_mode: bool = True
    flts: bool = True
    slts: bool = True
    nested: bool = True
    prs: bool = True
    pds: bool = True
    pasid: bool = True
    pasid_bits: int = 20
    caching_mode: bool = True
    device_iotlb: bool = True
    pt: bool = True
    snoop_control: bool = False
    intremap: bool = True
    eim: bool = False
    fs1gp: bool = True
    fs5lp: bool = False
    ss_2m: bool = True
    ss_1g: bool = True
    ssads: bool = True
    srs: bool = True
    ers: bool = True
    eafs: bool = False
    rps: bool = False
    rprivs: bool = False
    adms: bool = False
    rwbf: bool = False
    esrtps: bool = False
    esirtps: bool = False
    psi: bool = True
    mamv: int = 18
    nd: int = 6
    nfr: int = 1
    fro: int = 0x22
    iro: int = 0xF
    dma_drain: bool = True
    ecap_c: bool = False
    smpwcs: bool = False
    queued_invalidation: bool = True
    iotlb_capacity: int = 0  # 0 = unbounded
    haw: int = 0  # host address width for reserved-bit checks; 0 = aw_bits

    def __post_init__(self) -> None:
        if self.aw_bits not in (39, 48, 57):
            raise ConfigError(f"aw_bits={self.aw_bits} unsupported; use 39, 48 or 57")
        if not 1 <= self.nfr <= 256:
            raise ConfigError(f"nfr={self.nfr}: number of fault records must be 1..256")
        if not 1 <= self.pasid_bits <= 20:
            raise ConfigError(f"pasid_bits={self.pasid_bits} must be 1..20")
        if self.scalable_mode and not self.queued_invalidation:
            raise ConfigError(
                "scalable mode requires queued invalidation (set queued_invalidation=True)"
            )
        if not 0 <= self.mamv <= 63:
            raise ConfigError(f"mamv={self.mamv} must be 0..63")

    @classmethod
    def from_kwargs(cls, **kwargs: object) -> VtdConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ConfigError(f"unknown VtdModel option(s) {unknown}; known: {sorted(names)}")
        return cls(**kwargs)  # type: ignore[arg-type]

    @property
    def host_address_width(self) -> int:
        return self.haw or self.aw_bits

    def cap(self) -> Cap:
        sagaw = 0
        if self.aw_bits >= 39:
            sagaw |= 1 << 1
        if self.aw_bits >= 48:
            sagaw |= 1 << 2
        if self.aw_bits >= 57:
            sagaw |= 1 << 3
        return Cap(
            nd=self.nd,
            rwbf=int(self.rwbf),
            cm=int(self.caching_mode),
            sagaw=sagaw,
            mgaw=self.aw_bits - 1,
            fro=self.fro,
            sllps=int(self.ss_2m) | int(self.ss_1g) << 1,
            psi=int(self.psi),
            nfr=self.nfr - 1,
            mamv=self.mamv if self.psi else 0,
            dwd=int(self.dma_drain),
            drd=int(self.dma_drain),
            fl1gp=int(self.flts and self.fs1gp),
            fl5lp=int(self.flts and self.fs5lp),
            esirtps=int(self.esirtps),
            esrtps=int(self.esrtps),
        )

    def ecap(self) -> Ecap:
        sm = self.scalable_mode
        return Ecap(
            c=int(self.ecap_c),
            qi=int(self.queued_invalidation),
            dt=int(self.device_iotlb),
            ir=int(self.intremap),
            eim=int(self.intremap and self.eim),
            pt=int(self.pt),
            sc=int(self.snoop_control),
            iro=self.iro,
            mhmv=15 if self.intremap else 0,
            nest=int(sm and self.nested and self.flts and self.slts),
            prs=int(sm and self.prs),
            ers=int(sm and self.ers),
            srs=int(sm and self.srs),
            eafs=int(sm and self.eafs),
            pss=(self.pasid_bits - 1) if (sm and self.pasid) else 0,
            pasid=int(sm and self.pasid),
            pds=int(sm and self.prs and self.pds),
            smts=int(sm),
            slads=int(sm and self.slts and self.ssads),
            slts=int(sm and self.slts),
            flts=int(sm and self.flts),
            smpwcs=int(sm and self.smpwcs),
            rps=int(sm and self.rps),
            adms=int(self.adms),
            rprivs=int(sm and self.rprivs),
        )


# Values reported by real QEMU builds (docs/FIELD_NOTES.md), kept for decoding tests and for the
# differential harness to configure the model like the device under test.
QEMU_10_0_CAP = 0x01D2008C222F0686
QEMU_10_0_ECAP = 0x890000F00F4A
QEMU_11_1_CAP = 0x81D2008C222F0686
QEMU_11_1_ECAP = 0x8D9A20F00F4E


def config_from_caps(cap: Cap | int, ecap: Ecap | int, **overrides: object) -> VtdConfig:
    """A model config that reproduces a device's CAP/ECAP (fields the model knows)."""
    c = cap if isinstance(cap, Cap) else Cap.decode(cap)
    e = ecap if isinstance(ecap, Ecap) else Ecap.decode(ecap)
    kw: dict[str, object] = dict(
        aw_bits=c.mgaw + 1,
        scalable_mode=bool(e.smts),
        flts=bool(e.flts),
        slts=bool(e.slts) or not e.smts,
        nested=bool(e.nest),
        prs=bool(e.prs),
        pds=bool(e.pds),
        pasid=bool(e.pasid),
        pasid_bits=e.pss + 1,
        caching_mode=bool(c.cm),
        device_iotlb=bool(e.dt),
        pt=bool(e.pt),
        snoop_control=bool(e.sc),
        intremap=bool(e.ir),
        eim=bool(e.eim),
        fs1gp=bool(c.fl1gp),
        fs5lp=bool(c.fl5lp),
        ss_2m=bool(c.sllps & 1),
        ss_1g=bool(c.sllps & 2),
        ssads=bool(e.slads),
        srs=bool(e.srs),
        ers=bool(e.ers),
        eafs=bool(e.eafs),
        rps=bool(e.rps),
        rprivs=bool(e.rprivs),
        adms=bool(e.adms),
        rwbf=bool(c.rwbf),
        esrtps=bool(c.esrtps),
        esirtps=bool(c.esirtps),
        psi=bool(c.psi),
        mamv=c.mamv,
        nd=c.nd,
        nfr=c.nfr + 1,
        fro=c.fro,
        iro=e.iro,
        dma_drain=bool(c.dwd and c.drd),
        ecap_c=bool(e.c),
        smpwcs=bool(e.smpwcs),
        queued_invalidation=bool(e.qi),
    )
    kw.update(overrides)
    return VtdConfig.from_kwargs(**kw)
