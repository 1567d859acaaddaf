"""The svmval-sva binding and workloads on a machine without the device: the ctypes ABI equals
the driver's C header (parsed, and compiled when a C compiler is here), absent_reason() names
each missing piece, every SVA workload skips naming it, and the workloads' own helpers
(patterns, pagemap presence, the kcore direct-map lookup) hold on real memory."""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workloads import sva, svadev
from workloads.catalog import all_workloads, execute
from workloads.pages import PAGE, gpa_of

REPO = Path(__file__).resolve().parents[2]
HEADER = REPO / "guest_image" / "driver" / "svmval_sva.h"
SIZES = {"__u32": 4, "__u64": 8}
STRUCTS = {"svmval_sva_info": svadev.SvaInfo, "svmval_sva_op": svadev.SvaOp,
           "svmval_sva_counters": svadev.SvaCounters}


def parse_structs(text: str) -> dict[str, list[tuple[str, int, int]]]:
    """struct name -> [(field, offset, size)] with natural alignment, from the header."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out: dict[str, list[tuple[str, int, int]]] = {}
    for name, body in re.findall(r"struct (\w+) \{(.*?)\};", text, flags=re.S):
        fields, off = [], 0
        for ctype, names in re.findall(r"(__u32|__u64)\s+([^;]+);", body):
            size = SIZES[ctype]
            for field in (n.strip() for n in names.split(",")):
                off = (off + size - 1) // size * size
                fields.append((field, off, size))
                off += size
        out[name] = fields
    return out


def parse_defines(text: str) -> dict[str, str]:
    return dict(re.findall(r"^#define\s+(\w+)\s+(.+?)\s*(?:/\*.*)?$", text, flags=re.M))


def test_ctypes_structures_match_the_c_header_field_for_field() -> None:
    parsed = parse_structs(HEADER.read_text())
    assert set(parsed) == set(STRUCTS)
    for cname, cls in STRUCTS.items():
        ours = [(f, getattr(cls, f).offset, getattr(cls, f).size) for f, *_ in cls._fields_]
        assert ours == parsed[cname], cname
        last = parsed[cname][-1]
        assert ctypes.sizeof(cls) == (last[1] + last[2] + 7) // 8 * 8, cname
    assert ctypes.sizeof(svadev.SvaOp) == 88 and ctypes.sizeof(svadev.SvaInfo) == 24
    assert tuple(f for f, _o, _s in parsed["svmval_sva_counters"]) == svadev.COUNTER_NAMES


def test_constants_match_the_c_header() -> None:
    d = parse_defines(HEADER.read_text())
    assert int(d["SVMVAL_SVA_ABI_VERSION"]) == svadev.ABI_VERSION
    for op in svadev.Op:
        assert int(d[f"SVMVAL_SVA_OP_{op.name}"]) == op.value
    for err in svadev.DevError:
        assert int(d[f"SVMVAL_SVA_ERR_{err.name}"]) == err.value

    def bit(name: str) -> int:
        m = re.match(r"\(1U << (\d+)\)", d[name])
        assert m is not None, (name, d[name])
        return 1 << int(m[1])

    for flag in (svadev.OpFlag.PRIV, svadev.OpFlag.EXEC, svadev.OpFlag.NO_PASID):
        assert bit(f"SVMVAL_SVA_OP_{flag.name}") == flag
    for info in svadev.InfoFlag:
        assert bit(f"SVMVAL_SVA_INFO_{info.name}") == info
    for st in svadev.Status:
        assert bit(f"SVMVAL_SVA_STATUS_{st.name}") == st
    assert d["SVMVAL_SVA_MAX_LEN"] == "(64ULL << 20)" and svadev.MAX_LEN == 64 << 20
    assert d["SVMVAL_IOC_MAGIC"] == "'S'"


@pytest.mark.skipif(shutil.which("cc") is None or not Path("/usr/include/linux/ioctl.h").exists(),
                    reason="no C compiler or kernel UAPI headers here")
def test_the_header_compiled_agrees_on_sizes_offsets_and_ioctl_numbers(tmp_path: Path) -> None:
    """The C compiler's view of the header (offsetof, sizeof, _IOR/_IOWR) against ctypes."""
    lines = []
    for cname, cls in STRUCTS.items():
        lines.append(f'printf("{cname} %zu\\n", sizeof(struct {cname}));')
        for field, *_ in cls._fields_:
            lines.append(f'printf("{cname}.{field} %zu\\n", offsetof(struct {cname}, {field}));')
    for ioc in ("INFO", "OP", "COUNTERS"):
        lines.append(f'printf("IOC_{ioc} %lu\\n", (unsigned long)SVMVAL_IOC_{ioc});')
    src = tmp_path / "abi.c"
    src.write_text("#include <stddef.h>\n#include <stdio.h>\n#include \"svmval_sva.h\"\nint main(void) {\n"
                   + "\n".join(lines) + "\nreturn 0;\n}\n")
    subprocess.run(["cc", "-Wall", "-Werror", "-I", str(HEADER.parent), "-o", str(tmp_path / "abi"), str(src)],
                   check=True)
    got = dict(line.split() for line in subprocess.run([str(tmp_path / "abi")], capture_output=True, text=True,
                                                       check=True).stdout.splitlines())
    for cname, cls in STRUCTS.items():
        assert int(got[cname]) == ctypes.sizeof(cls)
        for field, *_ in cls._fields_:
            assert int(got[f"{cname}.{field}"]) == getattr(cls, field).offset, (cname, field)
    assert int(got["IOC_INFO"]) == svadev.IOC_INFO
    assert int(got["IOC_OP"]) == svadev.IOC_OP
    assert int(got["IOC_COUNTERS"]) == svadev.IOC_COUNTERS


def _sysfs_device(root: Path, name: str = "0000:00:08.0", driver: str | None = "svmval_sva") -> Path:
    dev = root / "sys/bus/pci/devices" / name
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x1234\n")
    (dev / "device").write_text("0x5356\n")
    if driver:
        drv = root / "sys/bus/pci/drivers" / driver
        drv.mkdir(parents=True, exist_ok=True)
        (dev / "driver").symlink_to(drv)
    return dev


def test_absent_reason_names_each_missing_piece(tmp_path: Path) -> None:
    (tmp_path / "sys/bus/pci/devices").mkdir(parents=True)
    other = tmp_path / "sys/bus/pci/devices/0000:00:06.0"
    other.mkdir()
    (other / "vendor").write_text("0x1234\n")
    (other / "device").write_text("0x11e8\n")  # edu: same vendor, not ours
    reason = svadev.absent_reason(tmp_path)
    assert reason is not None and reason.startswith(svadev.ABSENT) and "1234:5356" in reason

    _sysfs_device(tmp_path, driver=None)
    assert "module is not loaded" in str(svadev.absent_reason(tmp_path))
    (tmp_path / "sys/module/svmval_sva").mkdir(parents=True)
    assert "bound to no driver" in str(svadev.absent_reason(tmp_path))
    (tmp_path / "sys/bus/pci/drivers/vfio-pci").mkdir(parents=True)
    (tmp_path / "sys/bus/pci/devices/0000:00:08.0/driver").symlink_to(tmp_path / "sys/bus/pci/drivers/vfio-pci")
    assert "bound to vfio-pci" in str(svadev.absent_reason(tmp_path))
    (tmp_path / "sys/bus/pci/devices/0000:00:08.0/driver").unlink()
    (tmp_path / "sys/bus/pci/drivers/svmval_sva").mkdir()
    (tmp_path / "sys/bus/pci/devices/0000:00:08.0/driver").symlink_to(tmp_path / "sys/bus/pci/drivers/svmval_sva")
    reason = svadev.absent_reason(tmp_path)
    assert reason is not None and reason.startswith(svadev.UNUSABLE) and "no /dev/svmval-sva0" in reason
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/svmval-sva0").mkdir()  # a directory: open(O_RDWR) fails like a refused bind
    reason = svadev.absent_reason(tmp_path)
    assert reason is not None and "bind refused: EISDIR" in reason
    assert svadev.absent_reason(tmp_path, try_open=False) is None


def test_this_machine_has_no_device_and_says_so() -> None:
    if svadev.find_devices():
        pytest.skip("this machine has an svmval-sva device")
    reason = svadev.absent_reason()
    assert reason is not None and reason.startswith("svmval-sva device absent")


SVA_WORKLOADS = [name for name in all_workloads() if name.startswith("sva_")]


def test_the_catalog_has_every_sva_workload_the_contract_asks_for() -> None:
    assert set(SVA_WORKLOADS) == {
        "sva_first_touch", "sva_read_crc", "sva_dma_api", "sva_opencl_svm", "sva_munmap_remap", "sva_fork_cow",
        "sva_hugepage_2m", "sva_readonly_write", "sva_kernel_address", "sva_stack_memory", "sva_multi_process",
        "sva_page_request_storm", "sva_pasid_not_present",
    }


@pytest.mark.parametrize("name", [n for n in SVA_WORKLOADS if not all_workloads()[n].needs])
def test_each_workload_skips_naming_the_absent_device(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sva, "absent_reason", lambda: "svmval-sva device absent: no PCI device 1234:5356 (test)")
    res = execute(all_workloads()[name], None)
    assert res.verdict == "skip", res.reason
    assert res.reason.startswith("svmval-sva device absent")
    assert sva.NEED in res.needs


def test_the_opencl_workload_needs_opencl_first_then_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    wl = all_workloads()["sva_opencl_svm"]
    assert wl.needs
    res = execute(wl, None, "no usable OpenCL device: none")
    assert res.verdict == "skip" and "OpenCL" in res.reason


def test_without_the_device_the_real_check_skips_every_workload() -> None:
    if svadev.find_devices():
        pytest.skip("this machine has an svmval-sva device")
    for name in SVA_WORKLOADS:
        if all_workloads()[name].needs:
            continue
        res = execute(all_workloads()[name], None)
        assert res.verdict == "skip" and res.reason.startswith("svmval-sva device absent"), (name, res.reason)


# -- the binding's ioctl plumbing, against a fake device ------------------------------------------


class FakeIoctl:
    """Stands in for fcntl.ioctl on the device: answers like the driver, records the ops."""

    def __init__(self) -> None:
        self.ops: list[dict[str, int]] = []

    def __call__(self, fd: int, req: int, buf: Any, mutate: bool = False) -> int:
        assert mutate
        if req == svadev.IOC_INFO:
            buf.abi_version, buf.pasid, buf.flags, buf.source_id = 1, 7, 0b1111, 0x40
        elif req == svadev.IOC_COUNTERS:
            buf.page_requests, buf.ops = 3, 2
        elif req == svadev.IOC_OP:
            self.ops.append({f: getattr(buf, f) for f in ("op", "flags", "src", "dst", "len", "pattern")})
            buf.status, buf.result, buf.wall_ns, buf.device_ns, buf.page_requests = 2, 0x1234, 1000, 500, 1
        else:
            raise OSError(25, "ENOTTY")
        return 0


def test_the_binding_packs_ops_and_unpacks_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeIoctl()
    monkeypatch.setattr(fcntl, "ioctl", fake)
    node = tmp_path / "node"
    node.write_bytes(b"")
    with svadev.SvaDevice(str(node)) as dev:
        info = dev.info()
        assert info.bound and info.pasid == 7 and info.source_id == 0x40
        assert svadev.InfoFlag.PRI in info.flags
        assert dev.counters()["page_requests"] == 3
        r = dev.op(svadev.Op.FILL, 0x1000, length=4096, pattern=0xAB, flags=svadev.OpFlag.PRIV)
        assert r.ok and r.result == 0x1234 and r.page_requests == 1 and r.error is svadev.DevError.NONE
        assert r.bandwidth() == 4096e9 / 1000 and r.bandwidth(device=True) == 4096e9 / 500
        dev.op(svadev.Op.COPY, 0x1000, 0x9000, length=8)
    assert fake.ops[0] == {"op": 5, "flags": 1, "src": 0x1000, "dst": 0x1000, "len": 4096, "pattern": 0xAB}
    assert fake.ops[1]["dst"] == 0x9000 and fake.ops[1]["op"] == 4
    assert r.record()["error"] == "NONE"


def test_an_unopenable_node_is_named_with_its_errno(tmp_path: Path) -> None:
    with pytest.raises(svadev.SvaUnavailable, match=r"bind refused: ENOENT"):
        svadev.SvaDevice(str(tmp_path / "missing"))


# -- the workloads' helpers on real memory --------------------------------------------------------


def test_expected_bytes_follow_the_contract() -> None:
    got = sva.pattern(0x1FF, 600)
    assert all(got[i] == (0x1FF + i * 131) & 0xFF for i in range(600))
    assert sva.fill(0x0102030405060708, 11) == bytes([8, 7, 6, 5, 4, 3, 2, 1, 8, 7, 6])


def test_present_pages_sees_first_touch() -> None:
    r = sva.Region(8 * PAGE)
    try:
        assert sva.present_pages(r.addr, r.size) == 0
        r.write(b"x", 3 * PAGE)
        r.write(b"y" * (PAGE + 2), 5 * PAGE - 1)  # spans pages 4, 5, 6
        assert sva.present_pages(r.addr, r.size) == 4
        assert sva.pages_of(r.addr + 10, PAGE) == 2
        assert r.read()[3 * PAGE] == ord("x")
    finally:
        r.unmap()


def test_readonly_region_and_fixed_remap() -> None:
    r = sva.Region(2 * PAGE)
    addr = r.addr
    r.write(b"abc")
    r.protect(sva.PROT_READ)
    assert r.read()[:3] == b"abc"
    r.unmap()
    again = sva._map_at(addr, 2 * PAGE)
    assert again.addr == addr and again.read() == bytes(2 * PAGE)
    again.unmap()


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/proc/kcore").exists(), reason="needs root and /proc/kcore")
def test_the_direct_map_alias_of_a_page_holds_its_bytes() -> None:
    """The kernel address sva_kernel_address aims at is really this page's alias: /proc/kcore
    read at it gives the page's bytes."""
    r = sva.Region(PAGE)
    try:
        data = np.random.default_rng(9).integers(0, 256, PAGE, dtype=np.uint8).tobytes()
        r.write(data)
        gpa = gpa_of(r.addr)
        assert gpa is not None
        kva = sva._direct_map_address(gpa)
        if kva is None:
            pytest.skip("/proc/kcore has no RAM segment for this page")
        assert kva >= 0xFFFF800000000000
        with open("/proc/kcore", "rb") as f:
            head = f.read(64)
            phoff, = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                _t, _f, off, vaddr, _p, _fs, memsz, _a = struct.unpack_from("<IIQQQQQQ", table, i * phentsize)
                if vaddr <= kva < vaddr + memsz:
                    f.seek(off + kva - vaddr)
                    assert zlib.crc32(f.read(PAGE)) == zlib.crc32(data)
                    break
            else:
                pytest.fail("no segment holds the address")
    finally:
        r.unmap()
