"""Seeded bugs a user can run (`svmval run --seed-bug NAME`) to prove the checker fails on
real traffic on their own machine. Each names the check that must FAIL and how the bug is
planted; none of them is on in a normal run."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import ConfigError
from harness.qemu.profiles import SLOT_EDU, sid_of


@dataclass(frozen=True)
class SeedBug:
    name: str
    what: str  # the bug, as a user reads it
    fails: str  # the check (or workload) that must FAIL on it
    qemu_args: tuple[str, ...] = ()  # appended to QEMU's command line
    stale_pte: bool = False  # retarget a PTE edu_dma holds, with no invalidation
    stale_use: bool = False  # take write away from PTEs edu_dma reads again after its hold
    wrong_translation: bool = False  # retarget a PTE edu_dma holds before the translation check
    guest_env: tuple[tuple[str, str], ...] = ()  # set for edu_dma (workloads/edu_dma.py reads it)
    guest_setup: tuple[str, ...] = ()  # shell commands run in the guest (root) before the workloads
    workloads: tuple[str, ...] = ()  # the workloads that make the traffic it needs


def _seed_response(field: str) -> str:
    # guest_image/driver/svmval_sva.c: the next page group response names a wrong `field`
    return f"echo {field} > /sys/module/svmval_sva/parameters/seed_response"


SEED_BUGS: dict[str, SeedBug] = {b.name: b for b in (
    SeedBug("stale-pte", "a first-stage PTE of a page the device just used is changed in guest RAM with no "
            "invalidation (restored before the guest runs on)", "qi-completeness (edu_dma held)",
            stale_pte=True, workloads=("edu_dma",)),
    SeedBug("stale-use", "after the host's pause at edu_dma's hold point, the first-stage PTEs of the 8 "
            "pages the device reads lose their write permission in guest RAM with no invalidation; the "
            "device reads them again from the IOTLB (8 stale uses); the guest invalidates them later, "
            "when it unmaps them", "qi-completeness (the final one: STALE USE, once per page)",
            stale_use=True, workloads=("edu_dma",)),
    SeedBug("wrong-translation", "while edu_dma holds its mappings, the first-stage PTE of its first page "
            "points to another page (restored before the guest runs on)",
            "translation (edu_dma: the model's walk no longer gives the GPA the guest and QEMU used)",
            wrong_translation=True, workloads=("edu_dma",)),
    SeedBug("stray-dma", "edu_dma's driver makes one DMA read of a page it never mapped for the device "
            "(a driver bug: the unit must block and record it)", "faults (an unexpected DMA fault)",
            guest_env=(("SVMVAL_SEED", "stray-dma"),), workloads=("edu_dma",)),
    SeedBug("viommu-keeps-iotlb", "the vIOMMU keeps the edu device's IOTLB entries through every "
            "invalidation (svmval's QEMU, patches/0004), so an IOVA unmapped and mapped to another page "
            "still reads the old one", "qi-completeness (a hit after a covering invalidation) and "
            "edu_dma_remap (it reads the old page)",
            qemu_args=("-global", f"intel-iommu.x-seed-keep-iotlb-sid={sid_of(SLOT_EDU):#x}"),
            workloads=("edu_dma_remap",)),
    SeedBug("device-ignores-invalidation", "the svmval-sva device keeps its ATC entries when the guest "
            "invalidates them (device-IOTLB), so it reads and writes pages the process no longer maps",
            "sva_munmap_remap (it sees the old page's data)",
            qemu_args=("-global", "svmval-sva.x-seed-ignore-invalidation=on"),
            workloads=("sva_munmap_remap",)),
    SeedBug("page-request-never-closed", "the svmval-sva device sends page requests without "
            "last-page-in-group, so the guest can never answer them", "prq",
            qemu_args=("-global", "svmval-sva.x-seed-no-last-page=on"), workloads=("sva_first_touch",)),
    SeedBug("wrong-prgi-response", "the guest's IOMMU driver answers one page request with a page group "
            "response naming another PRGI (the svmval_sva module's seed_response parameter probes "
            "intel_iommu_page_response); the device never gets its answer and the operation times out",
            "prq (a response that answers no outstanding request, and the group it left unanswered)",
            guest_setup=(_seed_response("prgi"),), workloads=("sva_first_touch",)),
    SeedBug("wrong-pasid-response", "the guest's IOMMU driver answers one page request with a page group "
            "response naming another PASID (as wrong-prgi-response); the unit finds no device "
            "behind it and the operation times out",
            "prq (a response that answers no outstanding request, the group it left unanswered, and "
            "one success response fewer than the guest sent)",
            guest_setup=(_seed_response("pasid"),), workloads=("sva_first_touch",)),
)}


def seed_bug(name: str) -> SeedBug:
    try:
        return SEED_BUGS[name]
    except KeyError:
        raise ConfigError(f"--seed-bug {name!r} is not a seeded bug; `--seed-bug help` lists: "
                          + ", ".join(SEED_BUGS)) from None
