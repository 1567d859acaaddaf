"""Fixtures for the VT-d model tests: a memory, a builder and a model wired together."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from harness.viommu import GuestMemory, PasidEntry, Pgtt, TableBuilder, VtdModel
from harness.viommu.builder import FsTables, SsTables

SID = 0x0018  # 00:03.0
PASID = 0x42
DID = 7


@dataclass
class Rig:
    mem: GuestMemory
    model: VtdModel
    b: TableBuilder
    extra: dict[str, Any] = field(default_factory=dict)

    def enable(self) -> None:
        self.model.enable(self.b.root, scalable=self.b.scalable)

    # -- scalable-mode shortcuts ----------------------------------------------------------
    def fs_pasid(self, sid: int = SID, pasid: int = PASID, *, did: int = DID, levels: int = 4,
                 **pe: Any) -> FsTables:
        """First-stage tables + PASID entry (PGTT=001) for (sid, pasid)."""
        fs = self.b.fs_tables(levels)
        if sid not in self.b._pasid_dirs:
            self.b.set_sm_context(sid)
        self.b.set_pasid_entry(sid, pasid, PasidEntry(
            p=1, pgtt=Pgtt.FIRST_STAGE, did=did, flptptr=fs.root, aw=2,
            flpm=1 if levels == 5 else 0, **pe))
        return fs

    def ss_pasid(self, sid: int = SID, pasid: int = PASID, *, did: int = DID, levels: int = 4,
                 **pe: Any) -> SsTables:
        ss = self.b.ss_tables(levels)
        if sid not in self.b._pasid_dirs:
            self.b.set_sm_context(sid)
        self.b.set_pasid_entry(sid, pasid, PasidEntry(
            p=1, pgtt=Pgtt.SECOND_STAGE, did=did, slptptr=ss.root, aw=levels - 2, **pe))
        return ss

    def nested_pasid(self, sid: int = SID, pasid: int = PASID, *, did: int = DID,
                     gpa_offset: int = 0x40_0000_0000, **pe: Any) -> tuple[FsTables, SsTables]:
        ss = self.b.ss_tables(4)
        fs = self.b.fs_tables(4, ss=ss, gpa_offset=gpa_offset)
        if sid not in self.b._pasid_dirs:
            self.b.set_sm_context(sid)
        self.b.set_pasid_entry(sid, pasid, PasidEntry(
            p=1, pgtt=Pgtt.NESTED, did=did, slptptr=ss.root, aw=2, flptptr=fs.root, **pe))
        return fs, ss


    # -- queued invalidation ----------------------------------------------------------------
    def qi_setup(self, wide: bool = True, qs: int = 0, base: int = 0x80_0000) -> None:
        from harness.viommu import Reg
        self.extra["qi"] = (base, wide, qs)
        self.model.write_reg(Reg.IQT, 0, 8)
        self.model.write_reg(Reg.IQA, base | (int(wide) << 11) | qs, 8)
        gsts = self.model.read_reg(Reg.GSTS) & ((1 << 31) | (1 << 25))
        self.model.write_reg(Reg.GCMD, gsts | (1 << 26))

    def submit(self, *descs: tuple[int, int, int, int]) -> int:
        """Write descriptors at the tail and move IQT (which runs them); returns new IQT."""
        from harness.viommu import Reg
        base, wide, qs = self.extra["qi"]
        shift = 5 if wide else 4
        size = 1 << (qs + 8 - int(wide))
        tail = self.model.read_reg(Reg.IQT, 8) >> shift
        for d in descs:
            at = base + (tail << shift)
            for i, q in enumerate(d[: 4 if wide else 2]):
                self.mem.write_u64(at + 8 * i, q)
            tail = (tail + 1) % size
        self.model.write_reg(Reg.IQT, tail << shift, 8)
        return tail << shift


def make_rig(scalable: bool = True, mem_size: int = 16 << 20, **config: Any) -> Rig:
    mem = GuestMemory(mem_size)
    # Legacy rigs use the same (scalable-capable) unit: RTADDR.TTM picks the mode.
    model = VtdModel(mem, **config)
    b = TableBuilder(mem, base=0x10_0000, limit=mem_size // 2, scalable=scalable)
    return Rig(mem, model, b)


class RigFactory(Protocol):
    """make_rig, as the rig_factory fixture hands it to a test."""

    def __call__(self, scalable: bool = True, mem_size: int = 16 << 20, **config: Any) -> Rig: ...


@pytest.fixture
def sm() -> Rig:
    """Scalable-mode unit (default config) with an empty root table."""
    return make_rig(True)


@pytest.fixture
def legacy() -> Rig:
    """Legacy-mode unit."""
    return make_rig(False)


@pytest.fixture
def rig_factory() -> RigFactory:
    return make_rig
