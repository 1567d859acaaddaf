"""svmval's own QEMU build (host_setup/qemu_build): keys, source verification, patches, the result."""

from __future__ import annotations

import fcntl
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import SvmvalError
from harness.qemu.probe import probe_qemu
from harness.qemu.qtest import VTD_BASE, QtestMachine
from harness.viommu.capability import Ecap
from host_setup.qemu_build import build, source, tree
from host_setup.qemu_build.errors import MissingBuildPackage, QemuBuildError, SourceUnavailable
from host_setup.qemu_build.tree import Named

SHA = "f" * 64
# intel-iommu settings by canonical key (harness/qemu/probe.py spells them for the build)
PLAIN: dict[str, bool | int] = {"scalable_mode": True, "flts": True, "pasid": True, "caching_mode": True}
SVM = {**PLAIN, "device_iotlb": True, "svm": True}


# -- keys ---------------------------------------------------------------------------
def test_the_tree_key_changes_with_each_input() -> None:
    patches = [Named("0001-a.patch", b"one"), Named("0002-b.patch", b"two")]
    base = build.tree_key(SHA, patches)
    variants = [
        build.tree_key("e" * 64, patches),  # another source package
        build.tree_key(SHA, [patches[0], Named("0002-b.patch", b"two!")]),  # a patch's text
        build.tree_key(SHA, [patches[0], Named("0002-c.patch", b"two")]),  # a patch's name
        build.tree_key(SHA, patches[:1]),  # a patch less
        build.tree_key(SHA, patches[::-1]),  # the order they apply in
        build.tree_key(SHA, patches, flags=(*build.CONFIGURE_FLAGS, "--enable-debug")),  # configure
        build.tree_key(SHA, patches, preparation="2"),  # the tree preparation itself
    ]
    assert build.tree_key(SHA, list(patches)) == base  # a pure function of its inputs
    assert len({base, *variants}) == len(variants) + 1


def test_the_install_key_changes_with_the_devices_and_the_tree() -> None:
    devices = [Named("svmval-sva.c", b"int x;")]
    base = build.install_key("t" * 64, devices)
    variants = [
        build.install_key("u" * 64, devices),
        build.install_key("t" * 64, [Named("svmval-sva.c", b"int y;")]),
        build.install_key("t" * 64, [Named("other.c", b"int x;")]),
        build.install_key("t" * 64, [*devices, Named("trace-events", b"x(void) \"\"")]),
        build.install_key("t" * 64, []),
    ]
    assert len({base, *variants}) == len(variants) + 1
    # the tree key ignores the devices: a device change reuses the configured tree
    assert build.tree_key(SHA, []) == build.tree_key(SHA, [])


# -- Sources and verification ---------------------------------------------------------
SOURCES = """\
Package: qemu
Version: 1:10.2.2+ds-1
Directory: pool/main/q/qemu
Checksums-Sha256:
 aaaa 10 qemu_10.2.2+ds-1.dsc
 bbbb 20 qemu_10.2.2+ds.orig.tar.xz

Package: qemu-other
Version: 9:1.0-1
Directory: pool/main/q/qemu-other
Checksums-Sha256:
 cccc 10 qemu-other_1.0-1.dsc

Package: qemu
Version: 1:11.1.3+ds-1
Directory: pool/main/q/qemu
Checksums-Sha256:
 dddd 11 qemu_11.1.3+ds-1.dsc
"""


def test_sources_are_read_newest_first() -> None:
    entries = source.parse_sources(SOURCES)
    assert [e.version for e in entries] == ["1:11.1.3+ds-1", "1:10.2.2+ds-1"]
    assert entries[1].dsc == "qemu_10.2.2+ds-1.dsc" and entries[1].dsc_sha256 == "aaaa"


@pytest.fixture(scope="module")
def fetched() -> source.FetchedSource:
    try:
        return source.fetch_source()
    except SourceUnavailable as exc:
        pytest.skip(f"Debian's qemu source cannot be fetched here: {exc}")


def test_the_fetched_source_verifies(fetched: source.FetchedSource) -> None:
    source.verify_files(fetched.dir, fetched.dsc, fetched.dsc_sha256, fetched.package, fetched.version)


def test_a_corrupted_file_is_rejected(fetched: source.FetchedSource, tmp_path: Path) -> None:
    for f in fetched.dir.iterdir():
        if f.name.endswith(".orig.tar.xz"):
            (tmp_path / f.name).symlink_to(f)  # 38 MB: read through, left alone
        else:
            shutil.copy2(f, tmp_path / f.name)
    dsc = tmp_path / fetched.dsc.name
    source.verify_files(tmp_path, dsc, fetched.dsc_sha256, fetched.package, fetched.version)  # the copy is whole
    debian = next(tmp_path.glob("*.debian.tar.*"))
    data = bytearray(debian.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    debian.write_bytes(bytes(data))
    wrong = rf"{re.escape(fetched.version)}: .*{re.escape(debian.name)} does not match the sha256"
    with pytest.raises(SourceUnavailable, match=wrong):
        source.verify_files(tmp_path, dsc, fetched.dsc_sha256, fetched.package, fetched.version)
    # and a .dsc that is not the one Sources lists
    with pytest.raises(SourceUnavailable, match=rf"{re.escape(dsc.name)} has sha256 .*Sources says"):
        source.verify_files(tmp_path, dsc, "0" * 64, fetched.package, fetched.version)


# -- build packages ---------------------------------------------------------------------
def test_a_missing_build_package_is_named() -> None:
    check = {"libsvmval-absent-dev": "/nonexistent/svmval-absent.pc", "svmval-absent-tool": "svmval-absent-tool",
             "sh-present": "sh"}
    with pytest.raises(MissingBuildPackage) as info:
        build.require_packages(check)
    assert isinstance(info.value, SvmvalError)
    assert info.value.packages == ["libsvmval-absent-dev", "svmval-absent-tool"]
    assert "apt-get install --no-install-recommends libsvmval-absent-dev svmval-absent-tool" in str(info.value)
    assert "sh-present" not in str(info.value)


def test_a_failed_step_names_its_log(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    with pytest.raises(QemuBuildError, match=rf"QEMU configure failed \(exit 3\); build log: {re.escape(str(log))}"
                       r"(.|\n)*boom"):
        build._run_logged(["sh", "-c", "echo boom; exit 3"], tmp_path, log, "QEMU configure")
    assert "boom" in log.read_text()  # kept


def test_this_machine_has_every_build_package() -> None:
    assert build.missing_packages() == [], "run `make bootstrap`"


# -- the patch series and the device integration ---------------------------------------
@pytest.fixture(scope="module")
def unpacked(fetched: source.FetchedSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("qemu-src")
    source.unpack(fetched, d / "src", d / "unpack.log")
    return d / "src"


def test_the_patch_series_applies_cleanly(unpacked: Path, tmp_path: Path) -> None:
    patches = tree.patch_files()
    assert [p.name[:4] for p in patches] == ["0001", "0002", "0003", "0004"]
    for p in patches:  # each says why, and what upstream behaviour it mirrors or that it changes none
        header = p.read_text().split("\n--- a/")[0]
        assert "Why:" in header, p.name
        assert (("Mirrors:" in header and "11.1" in header and "svm=on" in header)
                or "Observability only" in header or "test-only, off by default" in header), p.name
    tree.apply_patches(unpacked, tree.read_all(patches), tmp_path / "patch.log")
    log = (tmp_path / "patch.log").read_text()
    assert "FAILED" not in log and "fuzz" not in log.lower() and "offset" not in log.lower(), log
    c = (unpacked / "hw/i386/intel_iommu.c").read_text()
    assert 'DEFINE_PROP_BOOL("svm", IntelIOMMUState, svm, false)' in c
    assert "trace_vtd_ats_translate(" in c and "trace_vtd_prq_desc(" in c
    events = (unpacked / "hw/i386/trace-events").read_text()
    assert "\nvtd_ats_translate(" in events and "\nvtd_prq_desc(" in events
    # applying again is refused, not doubled
    with pytest.raises(SvmvalError, match="0001"):
        tree.apply_patches(unpacked, tree.read_all(patches), tmp_path / "again.log")


def test_device_files_are_built_in_and_taken_out(unpacked: Path, tmp_path: Path) -> None:
    tree.fix_build(unpacked)
    tree.fix_build(unpacked)  # idempotent
    assert tree.EDK2_FIX in (unpacked / "meson.build").read_text()
    meson = unpacked / "hw/misc/meson.build"
    pristine = meson.read_text()
    devdir = tmp_path / "device"
    devdir.mkdir()
    (devdir / "svmval-sva.c").write_text("/* a device */\n")
    (devdir / "svmval-sva.h").write_text("/* its header */\n")
    (devdir / "trace-events").write_text('svmval_sva_op(int op) "op %d"\n')
    changed = tree.install_devices(unpacked, tree.read_all(tree.device_files(devdir)))
    assert set(changed) == {"svmval-sva.c", "svmval-sva.h", "meson.build", "trace-events"}
    assert (unpacked / "hw/misc/svmval-sva.c").read_text() == "/* a device */\n"
    assert "system_ss.add(when: ['CONFIG_PCI_DEVICES', 'CONFIG_PCI_EXPRESS'], if_true: files('svmval-sva.c'))" \
        in meson.read_text()
    assert "files('svmval-sva.h')" not in meson.read_text()
    assert 'svmval_sva_op(int op) "op %d"' in (unpacked / "hw/misc/trace-events").read_text()
    # nothing changed: nothing rewritten (ninja then rebuilds nothing)
    mtime = meson.stat().st_mtime_ns
    assert tree.install_devices(unpacked, tree.read_all(tree.device_files(devdir))) == []
    assert meson.stat().st_mtime_ns == mtime
    # an empty device folder: the tree is QEMU's own again
    for f in devdir.iterdir():
        f.unlink()
    tree.install_devices(unpacked, tree.read_all(tree.device_files(devdir)))
    assert meson.read_text() == pristine
    assert not (unpacked / "hw/misc/svmval-sva.c").exists()
    # a device must not replace one of QEMU's own files
    (devdir / "edu.c").write_text("/* not QEMU's */\n")
    with pytest.raises(SvmvalError, match="edu.c"):
        tree.install_devices(unpacked, tree.read_all(tree.device_files(devdir)))


# -- the built QEMU (builds it when missing: minutes) ------------------------------------
@pytest.fixture(scope="module")
def svmval_qemu() -> str:
    return str(build.ensure_svmval_qemu())


@pytest.fixture
def vm_lock() -> Iterator[None]:
    with open("/tmp/svmval-vm.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


@pytest.mark.slow
def test_the_build_has_the_svm_knob_and_its_trace_events(svmval_qemu: str) -> None:
    info = probe_qemu(svmval_qemu)
    assert info.iommu_property("svm") == "svm"
    assert {"x-pasid-mode", "device-iotlb", "x-flts", "x-scalable-mode"} <= info.iommu_properties
    assert info.has_device("edu")
    assert info.trace_events.parent == Path(svmval_qemu).parent
    events = info.trace_events.read_text()
    assert "\nvtd_ats_translate(" in events and "\nvtd_prq_desc(" in events
    help_text = subprocess.run([svmval_qemu, "-device", "intel-iommu,help"], capture_output=True, text=True,
                               check=True).stdout
    assert "svm=<bool>" in help_text


def _start_error(qemu: str, **settings: bool) -> str:
    props = probe_qemu(qemu).iommu_args({"scalable_mode": True, "flts": True, **settings})
    proc = subprocess.run([qemu, "-M", "q35", "-display", "none", "-nodefaults", "-S", "-accel", "tcg",
                           "-device", f"intel-iommu,{props}", "-qmp", "stdio"],
                          input='{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n',
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.stderr if proc.returncode != 0 else ""


@pytest.mark.slow
def test_svm_needs_device_iotlb_and_pasid_and_lifts_the_pasid_dt_refusal(svmval_qemu: str, vm_lock: None) -> None:
    assert "Need to set device IOTLB for svm" in _start_error(svmval_qemu, pasid=True, svm=True)
    assert "Need to set PASID" in _start_error(svmval_qemu, device_iotlb=True, svm=True)
    assert "PASID based device IOTLB is not supported" in _start_error(
        svmval_qemu, pasid=True, device_iotlb=True)  # 10.2's refusal stands without svm
    assert _start_error(svmval_qemu, pasid=True, device_iotlb=True, svm=True) == ""


@pytest.mark.slow
def test_svm_on_reports_prs_pds_with_dt_and_pasid_over_qtest(svmval_qemu: str, vm_lock: None) -> None:
    with QtestMachine(SVM, qemu=svmval_qemu) as m:
        ecap = Ecap.decode(m.readq(VTD_BASE + 0x10))
    assert (ecap.prs, ecap.pds, ecap.dt, ecap.pasid, ecap.nwfs) == (1, 1, 1, 1, 1)
    with QtestMachine(PLAIN, qemu=svmval_qemu) as m:
        plain = Ecap.decode(m.readq(VTD_BASE + 0x10))
    assert (plain.prs, plain.pds, plain.pasid) == (0, 0, 1)  # svm=off: 10.2.2's ECAP unchanged


def _wait_with_page_drain(m: QtestMachine) -> tuple[int, int]:
    """Submit one wait descriptor with SW and PD (page-request drain): (status word written, FSTS)."""
    queue, status = 0x10_0000, 0x10_1000
    m.write(status, bytes(4))
    m.write(queue, struct.pack("<QQ", 0x5 | 1 << 5 | 1 << 7 | 0xC0FFEE << 32, status))
    m.writeq(VTD_BASE + 0x90, queue)  # IQA: 128-bit descriptors, 256 of them
    m.writel(VTD_BASE + 0x18, 1 << 26)  # GCMD.QIE
    m.writeq(VTD_BASE + 0x88, 0x10)  # IQT: one descriptor
    return int.from_bytes(m.read(status, 4), "little"), m.readl(VTD_BASE + 0x34)


@pytest.mark.slow
def test_the_wait_descriptor_page_drain_bit_is_accepted_with_svm(svmval_qemu: str, vm_lock: None) -> None:
    with QtestMachine(SVM, qemu=svmval_qemu) as m:
        assert _wait_with_page_drain(m) == (0xC0FFEE, 0)  # status written, no IQE
    with QtestMachine(PLAIN, qemu=svmval_qemu) as m:
        written, fsts = _wait_with_page_drain(m)
    assert written == 0 and fsts & 0x10  # PD reserved without PDS: IQE, as in 10.2.2
