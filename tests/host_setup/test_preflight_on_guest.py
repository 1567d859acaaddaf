"""Host preflight over SSH against a real machine with VT-d: the local lab's guest,
whose DMAR unit is QEMU's emulated VT-d (no lab hardware can be reached from here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_image.build import ensure_image
from harness.inventory import load_inventory
from harness.qemu.session import local_guest
from harness.remote import SshTarget
from host_setup.preflight import run_preflight

pytestmark = pytest.mark.slow


def test_preflight_reads_and_decodes_a_real_dmar_unit(tmp_path: Path) -> None:
    image = ensure_image()
    with local_guest(image, tmp_path / "vm", use_cache_disk=False) as g:
        kt, kb = image.host_key_pub.read_text().split()[:2]
        (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{g.spec.ssh_port} {kt} {kb}\n")
        inv = tmp_path / "labs.toml"
        inv.write_text(
            f'[hosts.guest]\naddress = "127.0.0.1"\nport = {g.spec.ssh_port}\nkey_file = "{image.ssh_key}"\n'
            f'known_hosts = "{tmp_path / "known_hosts"}"\ndevice = "0000:00:06.0"\n'
        )
        host = load_inventory(inv).get("guest")
        with SshTarget(host) as t:
            verdicts = {v.name: v for v in run_preflight(t, host)}
    ecap = verdicts["dmar0 ECAP"]
    # QEMU 10.0's unit: scalable mode + first stage + PASID, but no second stage or nesting.
    assert ecap.ok is False and "ecap 0x890000f00f4a" in ecap.value
    assert "second-stage" in ecap.value and "nested translation" in ecap.value and ecap.fix
    assert verdicts["kernel cmdline"].ok is True  # intel_iommu=on,sm_on
    assert verdicts["dmar0 caching mode"].value.startswith("CM=1")
    group = verdicts["device IOMMU group"]
    assert group.ok is True and "0000:00:06.0" in group.value  # edu sits alone in its group
    assert verdicts["device PASID/ATS/PRI"].ok is False  # edu has none of them
