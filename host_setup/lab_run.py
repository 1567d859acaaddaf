"""A guest session on a lab host, over SSH (harness/run.py runs the same run on it).

1. preflight on the host (a verdict per line; what blocks depends on the host's nesting);
2. lock the host, reserve hugepages, hand the device to vfio-pci (journaled);
3. send the guest image once (content hash), start QEMU through the SSH session —
   `lab-nested` (KVM, iommufd, the device) or, on a host that cannot nest,
   `local-emulated` (QEMU's emulated VT-d there); the guest is reached through the host,
   QMP through an SSH forward, guest RAM over SFTP, QEMU's pagemap read on the host;
4. console, trace and QEMU's stderr brought back; the host restored on every way out.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from guest_image.build import ensure_image
from harness.errors import EnvironmentBroken
from harness.inventory import HostSpec, Nesting
from harness.remote import SshTarget
from harness.session import GuestSession
from host_setup.preflight import run_preflight
from host_setup.preflight_line import PreflightLine
from host_setup.provision import provisioned
from host_setup.remote_vm import remote_guest
from reports.bundle import Bundle

Say = Callable[[str], None]

# On a host that runs the emulated VT-d, its own IOMMU's abilities do not matter.
EMULATED_BLOCKERS = ("QEMU", "hugepages (2 MiB)", "assigned device")


def blocking(verdicts: list[PreflightLine], host: HostSpec) -> list[PreflightLine]:
    failed = [v for v in verdicts if v.failed]
    if host.nesting is Nesting.IOMMUFD_FLTS:
        return failed
    return [v for v in failed if v.name.startswith(EMULATED_BLOCKERS)]


@contextmanager
def lab_session(host: HostSpec, bundle: Bundle, say: Say) -> Iterator[GuestSession]:
    """A booted guest on `host`: preflight (nothing changed on a host that fails it),
    then the host provisioned, the guest booted through SSH; on every way out the guest
    stopped and the host restored (ctrl-C included, re-raised after the restore)."""
    mf = bundle.manifest
    with SshTarget(host) as t:
        say(f"{host.name}: preflight")
        verdicts = run_preflight(t, host)
        bundle.add_json("preflight", "preflight.json", [v.__dict__ for v in verdicts])
        stop = blocking(verdicts, host)
        if stop:
            raise EnvironmentBroken(f"preflight failed on {host.name!r}, nothing was changed there: " + "; ".join(
                f"{v.name}: {v.value} (fix: {v.fix})" for v in stop))
        image = ensure_image(say)
        mf.guest = {"image_digest": image.digest, "kernel": image.manifest["kernel"],
                    "suite": image.manifest["suite"]}
        with provisioned(t, host, mf.run_id, say) as lab:
            mf.host["device"] = host.device or ""
            mf.host["lock"] = lab.lock_dir(host)
            bundle.save()
            with remote_guest(t, lab, image, mf.run_id, bundle.path / "vm", say) as g:
                yield g
