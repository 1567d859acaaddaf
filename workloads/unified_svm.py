"""cl_khr_unified_svm (OpenCL-CTS test_svm's unified_svm_* tests): run only where a device
offers the extension, and otherwise a skip naming it. What runs is the capability-query
part (no device here offers the extension to test allocation against)."""

from __future__ import annotations

from workloads import clapi
from workloads.capabilities import UNIFIED_SVM
from workloads.catalog import Env, Result, Skip, check, workload

# CL_SVM_CAPABILITY_*_KHR bits the query must at least know (cl_ext.h, cl_khr_unified_svm 0.9)
SINGLE_ADDRESS_SPACE, SYSTEM_ALLOCATED, DEVICE_OWNED, DEVICE_UNASSOCIATED = 1 << 0, 1 << 1, 1 << 2, 1 << 3

COVERED = ("unified_svm_consistency", "unified_svm_capabilities")
NOT_COVERED = ("unified_svm_api_query_defaults", "unified_svm_api_suggested_type_index", "unified_svm_apis",
               "unified_svm_corner_case_alloc_free", "unified_svm_corner_case_set_kernel_arg",
               "unified_svm_corner_case_set_kernel_exec_info", "unified_svm_corner_case_memcpy",
               "unified_svm_corner_case_mem_fill", "unified_svm_corner_case_migrate_mem", "unified_svm_exec_info",
               "unified_svm_free", "unified_svm_map_unmap", "unified_svm_memcpy", "unified_svm_memfill",
               "unified_svm_migrate", "unified_svm_set_arg", "unified_svm_threading_alloc_free")


@workload("unified_svm_capabilities", "unified SVM (cl_khr_unified_svm)", cts=COVERED)
def unified_capabilities(env: Env, res: Result) -> None:
    """The platform's SVM types are the intersection of its devices' non-zero ones, each device's
    are a superset or zero, and at least one type exists (where cl_khr_unified_svm is offered)."""
    if env is None:
        raise Skip("no OpenCL device")
    info = env.infos[env.active[0]]
    if UNIFIED_SVM not in info.extensions:
        raise Skip(f"device {info.name!r} lacks {UNIFIED_SVM}")
    platform_caps = clapi.platform_info_u64s(env.platform, clapi.CL_PLATFORM_SVM_TYPE_CAPABILITIES_KHR)
    devices = env.platform.get_devices()
    per_device = [clapi.device_info_u64s(d, clapi.CL_DEVICE_SVM_TYPE_CAPABILITIES_KHR) for d in devices]
    check(bool(platform_caps), "CL_PLATFORM_SVM_TYPE_CAPABILITIES_KHR lists no SVM type")
    for d, caps in zip(devices, per_device, strict=True):
        check(len(caps) == len(platform_caps), f"{d.name}: {len(caps)} SVM types, the platform {len(platform_caps)}")
    for k, pcap in enumerate(platform_caps):
        nonzero = [caps[k] for caps in per_device if caps[k]]
        inter = 0
        for c in nonzero:
            inter = c if not inter else inter & c
        check(pcap == inter, f"SVM type {k}: platform {pcap:#x} is not the devices' intersection {inter:#x}")
        for d, caps in zip(devices, per_device, strict=True):
            check(caps[k] == 0 or caps[k] & pcap == pcap, f"{d.name}: SVM type {k} {caps[k]:#x} is neither "
                  f"zero nor a superset of the platform's {pcap:#x}")
    res.extra["svm_types"] = [f"{c:#x}" for c in platform_caps]
    res.extra["not_covered"] = list(NOT_COVERED)
