"""The model against QEMU 11.1's VT-d, driven by its iommu-testdev (the device QEMU's own
IOMMU qtests use): it writes a known word to an IOVA through the unit and reads it back
at the GPA the model gave; faults must match the model's."""

from __future__ import annotations

import pytest
import rig

from harness.qemu.probe import probe_qemu
from harness.qemu.qtest import TESTDEV_PATTERN, QtestMachine
from harness.qemu.sid import ensure_sid_qemu
from harness.viommu import FaultReason, VtdModel

pytestmark = [pytest.mark.slow, pytest.mark.qemu]  # fetches sid's QEMU when it is not cached yet


def test_iommu_testdev_dma_agrees_with_the_model_on_qemu_11() -> None:
    binary = str(ensure_sid_qemu())
    assert probe_qemu(binary).version >= (11, 0, 0)
    with QtestMachine(rig.FLTS, qemu=binary, testdev=True) as q:
        sid = q.testdev_sid
        mem, b, fs = rig.first_stage_rig(sid)
        fs.map(rig.IOVA_DST, rig.DST_HPA)
        fs.map(rig.IOVA_RO, rig.SRC_HPA, writable=False)
        model = VtdModel(mem)
        rig.program(q, model, b, scalable=True)
        compared = 0
        for offset in (0x0, 0x40, 0xFFC):
            t = model.translate(sid, rig.IOVA_DST + offset, write=True)
            assert t.ok and t.address == rig.DST_HPA + offset
            # The word lands where the model's translation says, and nowhere else.
            assert q.testdev_dma(rig.IOVA_DST + offset, t.address) == 0
            assert int.from_bytes(q.read(t.address, 4), "little") == TESTDEV_PATTERN
            compared += 1
        assert rig.fault_record(q) is None
        for iova, expect in ((rig.IOVA_UNMAPPED, FaultReason.FS_ENTRY_NOT_PRESENT),
                             (rig.IOVA_RO, FaultReason.SM_WRITE_DENIED)):
            rig.clear_faults(q)
            assert q.testdev_dma(iova, rig.SRC_HPA) != 0  # the device saw its DMA fail
            t = model.translate(sid, iova, write=True)
            assert t.fault is expect and rig.fault_record(q) == (int(expect), sid), (t.fault, rig.fault_record(q))
            compared += 1
    print(f"qtest iommu-testdev oracle (QEMU 11): {compared} DMAs compared, 0 mismatches")
