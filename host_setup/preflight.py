"""Lab-host preflight over SSH: can this host nest a guest's first stage for SVM?

Every line is read off the host (through `harness.remote`), decoded with the
reference model's CAP/ECAP decoder, and a failed line says how to fix it.
"""

from __future__ import annotations

import re

from harness.inventory import HostSpec
from harness.remote import Target
from harness.viommu.capability import Cap, Ecap
from host_setup.preflight_line import PreflightLine

# What nesting a guest's first stage under the host's second stage needs from a unit.
NEEDED_ECAP = (("smts", "scalable mode"), ("flts", "first-stage"), ("slts", "second-stage"),
               ("nest", "nested translation"), ("pasid", "PASID"))
WANTED_ECAP = (("prs", "page requests"), ("dt", "device-TLB (ATS)"))


def _dmar_units(t: Target) -> list[PreflightLine]:
    units = [u for u in t.listdir("/sys/class/iommu") if u.startswith("dmar")]
    if not units:
        return [PreflightLine("VT-d units", False, "no /sys/class/iommu/dmar*",
                        "enable VT-d in the firmware and boot with intel_iommu=on")]
    out = []
    for unit in units:
        base = f"/sys/class/iommu/{unit}/intel-iommu"
        cap_s, ecap_s = t.read_text(f"{base}/cap"), t.read_text(f"{base}/ecap")
        if cap_s is None or ecap_s is None:
            out.append(PreflightLine(f"{unit} CAP/ECAP", False, "unreadable", "check sysfs permissions"))
            continue
        cap, ecap = Cap.decode(int(cap_s, 16)), Ecap.decode(int(ecap_s, 16))
        missing = [what for field, what in NEEDED_ECAP if not getattr(ecap, field)]
        out.append(PreflightLine(
            f"{unit} ECAP", not missing,
            f"cap {int(cap_s, 16):#x} ecap {int(ecap_s, 16):#x}"
            + (f"; lacks {', '.join(missing)}" if missing else "; SMTS FLTS SLTS NEST PASID"),
            "" if not missing else "this IOMMU cannot nest a guest's first stage: use a host whose "
            "VT-d has scalable mode with nesting (e.g. Sapphire Rapids or later)",
        ))
        soft = [what for field, what in WANTED_ECAP if not getattr(ecap, field)]
        if soft:
            out.append(PreflightLine(f"{unit} PRS/DT", None,
                                     f"lacks {', '.join(soft)}: PRQ checks use modelled traffic"))
        out.append(PreflightLine(f"{unit} caching mode", None, f"CM={cap.cm} (a host unit normally reports 0)"))
    return out


def _cmdline(t: Target) -> PreflightLine:
    cmdline = t.read_text("/proc/cmdline") or ""
    ok = re.search(r"intel_iommu=[^ ]*\bon\b", cmdline) is not None and "sm_on" in cmdline
    return PreflightLine("kernel cmdline", ok, cmdline.strip()[:160] or "unreadable",
                   "" if ok else "add intel_iommu=on,sm_on to the host kernel command line and reboot")


def _device_nodes(t: Target) -> list[PreflightLine]:
    vfio = t.exists("/sys/bus/pci/drivers/vfio-pci")
    out = [PreflightLine("vfio-pci driver", vfio, "registered" if vfio else "not loaded",
                   "" if vfio else "modprobe vfio-pci (and add it to /etc/modules-load.d)")]
    for node, fix in (("/dev/iommu", "modprobe iommufd (CONFIG_IOMMUFD)"),
                      ("/dev/vfio/vfio", "modprobe vfio-pci"),
                      ("/dev/vfio/devices", "a kernel with CONFIG_VFIO_DEVICE_CDEV")):
        present = t.exists(node)
        out.append(PreflightLine(node, present, "present" if present else "missing", "" if present else fix))
    return out


def _device(t: Target, host: HostSpec) -> list[PreflightLine]:
    if host.device is None:
        return [PreflightLine("assigned device", False, "none in the inventory", "set 'device' for this host")]
    base = f"/sys/bus/pci/devices/{host.device}"
    if not t.exists(base):
        return [PreflightLine("assigned device", False, f"{host.device} not present", "check the BDF with lspci -D")]
    group = (t.readlink(f"{base}/iommu_group") or "").rsplit("/", 1)[-1]
    members = t.listdir(f"/sys/kernel/iommu_groups/{group}/devices") if group else []
    alone = members == [host.device]
    if not group:
        grouping = PreflightLine("device IOMMU group", False, "none: the device is not behind an enabled IOMMU",
                           "boot the host with intel_iommu=on,sm_on (and VT-d on in the firmware)")
    else:
        grouping = PreflightLine("device IOMMU group", alone, f"group {group}: {', '.join(members) or 'none'}",
                           "" if alone else "the device shares its group: assign the whole group or move the card")
    driver = (t.readlink(f"{base}/driver") or "none").rsplit("/", 1)[-1]
    lspci = t.run(f"lspci -vvv -s {host.device}").stdout
    caps = {short: long in lspci for short, long in (("PASID", "Process Address Space ID"),
                                                     ("ATS", "Address Translation Service"),
                                                     ("PRI", "Page Request Interface"))}
    return [
        grouping,
        PreflightLine("device driver", None, driver),
        PreflightLine("device PASID/ATS/PRI", all(caps.values()),
                ", ".join(f"{k}{'' if v else ' missing'}" for k, v in caps.items()),
                "" if all(caps.values()) else "SVM needs a device with PASID, ATS and PRI"),
    ]


def _memory(t: Target, host: HostSpec) -> list[PreflightLine]:
    free = t.read_text("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
    total = t.read_text("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
    out = []
    if host.hugepages:
        meminfo = t.read_text("/proc/meminfo") or ""
        m = re.search(r"MemAvailable:\s+(\d+) kB", meminfo)
        avail_mib = int(m.group(1)) // 1024 if m else 0
        have = int(free or 0)
        ok = have >= host.hugepages or avail_mib >= host.hugepages * 2
        out.append(PreflightLine("hugepages (2 MiB)", ok,
                                 f"{have} free of {int(total or 0)}; {avail_mib} MiB available",
                           "" if ok else f"free memory for {host.hugepages} pages (provisioning reserves them)"))
    return out


def _qemu(t: Target, host: HostSpec) -> list[PreflightLine]:
    r = t.run(f"{host.qemu} --version", timeout=30)
    if not r.ok:
        return [PreflightLine("QEMU", False, f"{host.qemu} not runnable", "install QEMU >= 9.2 (x-flts with iommufd)")]
    props = t.run(f"{host.qemu} -device intel-iommu,help", timeout=30).stdout
    flts = "x-flts" in props or "fsts" in props
    return [
        PreflightLine("QEMU", True, r.stdout.splitlines()[0]),
        PreflightLine("QEMU intel-iommu first stage", flts, "x-flts/fsts present" if flts else "missing",
                "" if flts else "a QEMU with first-stage translation (x-flts, 9.2+) is needed"),
    ]


def run_preflight(target: Target, host: HostSpec) -> list[PreflightLine]:
    cpuinfo = target.read_text("/proc/cpuinfo") or ""
    vendor = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("vendor_id")), "?")
    verdicts = [PreflightLine("CPU vendor", vendor == "GenuineIntel", vendor,
                        "" if vendor == "GenuineIntel" else "VT-d scalable mode needs an Intel host")]
    verdicts += _dmar_units(target)
    verdicts.append(_cmdline(target))
    verdicts += _device_nodes(target)
    verdicts += _device(target, host)
    verdicts += _memory(target, host)
    verdicts += _qemu(target, host)
    return verdicts
