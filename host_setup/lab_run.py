"""The end-to-end run on a lab host, over SSH.

1. preflight on the host (a verdict per line; what blocks depends on the host's nesting);
2. lock the host, reserve hugepages, hand the device to vfio-pci (journaled);
3. send the guest image once (content hash), start QEMU through the SSH session —
   `lab-nested` (KVM, iommufd, the device) or, on a host that cannot nest,
   `local-emulated` (QEMU's emulated VT-d there);
4. the workloads and checks of the local lab (QMP through an SSH forward, guest RAM
   over SFTP, QEMU's pagemap read on the host), the guest reached through the host;
5. console, trace and QEMU's stderr brought back; the host restored on every way out.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from guest_image.build import ensure_image
from harness.errors import EnvironmentBroken, SvmvalError
from harness.inventory import HostSpec, Nesting
from harness.remote import SshTarget
from harness.run import RunOutcome, Say, close_run, new_bundle, run_in_guest
from host_setup.preflight import run_preflight
from host_setup.provision import provisioned
from host_setup.remote_vm import remote_guest
from host_setup.verdict import Verdict
from reports.bundle import CheckResult

# On a host that runs the emulated VT-d, its own IOMMU's abilities do not matter.
EMULATED_BLOCKERS = ("QEMU", "hugepages (2 MiB)", "assigned device")


def blocking(verdicts: list[Verdict], host: HostSpec) -> list[Verdict]:
    failed = [v for v in verdicts if v.failed]
    if host.nesting is Nesting.IOMMUFD_FLTS:
        return failed
    return [v for v in failed if v.name.startswith(EMULATED_BLOCKERS)]


def run_lab(host: HostSpec, artifacts: Path, *, workloads: list[str] | None = None,
            say: Say = lambda _m: None) -> RunOutcome:
    """The whole run on `host`; a broken lab ends up in the bundle, ctrl-C is re-raised
    once the host is restored and the bundle written."""
    bundle = new_bundle(artifacts, host)
    mf = bundle.manifest
    checks: list[CheckResult] = []
    results: dict[str, Any] | None = None
    t_start = time.monotonic()
    try:
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
                t0 = time.monotonic()
                with remote_guest(t, lab, image, mf.run_id, bundle.path / "vm", say) as g:
                    mf.durations["boot_s"] = round(time.monotonic() - t0, 1)
                    mf.qemu = g.qemu.describe()
                    bundle.save()
                    results, checks = run_in_guest(g, bundle, workloads, say)
                mf.durations["vm_s"] = round(time.monotonic() - t0, 1)
    except SvmvalError as exc:
        mf.error = "\n".join([str(exc), *getattr(exc, "__notes__", [])])
        say(f"run could not complete: {mf.error}")
    except KeyboardInterrupt as exc:
        notes = getattr(exc, "__notes__", [])
        mf.error = "interrupted (ctrl-C); " + ("; ".join(notes) if notes else "the host was restored")
        raise
    finally:
        close_run(bundle, results, checks, t_start)
    return RunOutcome(bundle, checks, results)
