"""The trace parser against real QEMU 10.0.2 traces (tests/fixtures/traces/README.md)."""

from __future__ import annotations

import lzma
import re
from collections import Counter
from pathlib import Path

import pytest

from harness.trace import (
    BadLine,
    DmarTranslate,
    GenericEvent,
    InvDesc,
    InvDescWaitSw,
    InvQiTail,
    IotlbPageUpdate,
    RegDmarRoot,
    RegWrite,
    SwitchAddressSpace,
    TraceParseError,
    count_events,
    descriptor_type_counts,
    iter_events,
    load_event_table,
    parse_trace_file,
    summarize,
    untyped_events,
)
from harness.trace.events import (
    QEMU_TYPE_WORDS,
    TYPED_BY_NAME,
    InvDescPasidCachePsi,
    PasidCacheDevsi,
)
from harness.trace.formats import EXTRA_FORMATS, compile_format, parse_declarations
from harness.viommu.descriptors import (
    QEMU_10_SM_CAPS,
    InvDescriptor,
    PasidIotlbGranularity,
    PasidIotlbInv,
    WaitDesc,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "traces"
PLAIN = FIXTURES / "vtd-rng256.trace.xz"  # IR events filtered out, no timestamps
FULL_TS = FIXTURES / "vtd-rng256-ts.trace.xz"  # -trace 'vtd_*' -msg timestamp=on

# The formats of the QEMU that wrote the fixtures (its trace-events-all's vtd_ lines),
# so these tests judge the parser, not whichever QEMU this machine has installed.
TE10 = FIXTURES / "qemu10.0.2-vtd-trace-events"


@pytest.fixture(scope="module")
def plain() -> list:
    return parse_trace_file(PLAIN, strict=True, trace_events=TE10)


@pytest.fixture(scope="module")
def full_ts() -> list:
    return parse_trace_file(FULL_TS, strict=True, trace_events=TE10)


def _lines(path: Path) -> list[str]:
    return lzma.decompress(path.read_bytes()).decode().splitlines(keepends=True)


# ------------------------------------------------------------- event table


def test_table_comes_from_the_installed_qemu() -> None:
    table = load_event_table(TE10)
    assert len([n for n in table.formats if n not in parse_declarations(
        EXTRA_FORMATS.splitlines(), "vtd_")]) == 65  # QEMU 10.0.2 has 65 vtd_* events
    assert untyped_events(table) == []  # every typed class fits 10.0.2's arguments
    fmt = table.formats["vtd_inv_desc"]
    assert fmt.arg_names == ("type", "hi", "lo")
    assert fmt.fmt == "invalidate desc type %s high 0x%x low 0x%x"


def test_printf_conversions() -> None:
    f = compile_format("vtd_x", "uint8_t bus, uint8_t slot, uint8_t fn, bool on",
                       '"Device %02x:%02x.%x switching (iommu enabled=%d)"')
    m = f.regex.fullmatch("Device 00:1f.3 switching (iommu enabled=1)")
    assert m is not None
    assert [c(g) for c, g in zip(f.converters, m.groups(), strict=True)] == [0, 0x1F, 3, True]
    f2 = compile_format("vtd_y", "int index, uint64_t n", '"idx %5d n %" PRIu64 " %%"')
    m2 = f2.regex.fullmatch("idx    -3 n 18446744073709551615 %")
    assert m2 is not None
    assert [c(g) for c, g in zip(f2.converters, m2.groups(), strict=True)] == [-3, 2**64 - 1]


def test_a_changed_signature_falls_back_to_generic(tmp_path: Path) -> None:
    """A QEMU whose vtd_reg_write lost an argument: not mis-assigned to RegWrite fields."""
    te = tmp_path / "trace-events-all"
    te.write_text('vtd_reg_write(uint64_t addr, uint64_t val) "addr 0x%"PRIx64" val 0x%"PRIx64\n')
    assert untyped_events(load_event_table(te)) == ["vtd_reg_write"]
    (ev,) = iter_events(["vtd_reg_write addr 0x88 val 0x3"], trace_events=te)
    assert type(ev) is GenericEvent and ev.args == {"addr": 0x88, "val": 3}


def test_qemu_11_pasid_cache_events_parse_with_a_10_table() -> None:
    lines = [
        "vtd_inv_desc_pasid_cache_psi PASID selective PC invalidation domain 0x5 pasid 0x1",
        "vtd_pasid_cache_devsi Dev selective PC invalidation dev: 00:03.00",
        "vtd_inv_desc_pasid_cache_gsi ",
    ]
    a, b, c = iter_events(lines, strict=True, trace_events=TE10)
    assert a == InvDescPasidCachePsi("vtd_inv_desc_pasid_cache_psi", 1, None, None, 5, 1)
    assert b == PasidCacheDevsi("vtd_pasid_cache_devsi", 2, None, None, 0, 3, 0)
    assert c.name == "vtd_inv_desc_pasid_cache_gsi"


# ---------------------------------------------------------- the real traces


def test_every_line_is_a_known_well_formed_event(plain: list, full_ts: list) -> None:
    assert len(plain) == 11962
    assert len(full_ts) == 13944
    assert [e.line for e in plain] == list(range(1, len(plain) + 1))
    assert not any(isinstance(e, BadLine) for e in plain + full_ts)


def test_descriptor_counts(plain: list) -> None:
    """256 hwrng reads under strict first-stage DMA: each read is one map + one strict
    unmap = one page-selective PASID-IOTLB invalidation + one wait (the few extra come
    from the hw_random core reading the device when it registers)."""
    assert descriptor_type_counts(plain) == Counter(
        {"wait": 312, "p-iotlb": 266, "iec": 22, "context-cache": 8, "iotlb": 8})
    s = summarize(plain)
    assert s.by_event["vtd_inv_desc"] == 616
    assert s.by_event["vtd_inv_desc_wait_sw"] == 312  # every wait asks for a status write
    assert s.by_event["vtd_inv_qi_tail"] == 313  # 312 submissions + IQT=0 at QI enable
    assert s.by_event["vtd_dmar_translate"] == 3109
    assert s.by_event["vtd_iotlb_page_update"] == 260
    assert "vtd_dmar_fault" not in s.by_event  # a clean run: no DMA faults
    assert not any(n.startswith("vtd_ir_") for n in s.by_event)  # filtered capture


def test_every_traced_descriptor_decodes(plain: list) -> None:
    decoded: Counter[tuple[str, object]] = Counter()
    for ev in plain:
        if isinstance(ev, InvDesc):
            d = ev.decode(caps=QEMU_10_SM_CAPS)  # Linux uses a 256-bit queue in SM
            assert isinstance(d, InvDescriptor), (ev, d)
            assert QEMU_TYPE_WORDS[ev.type] == d.desc_type
            decoded[type(d).__name__, getattr(d, "g", None)] += 1
    assert decoded[("PasidIotlbInv", PasidIotlbGranularity.PAGE)] == 259
    assert decoded[("PasidIotlbInv", PasidIotlbGranularity.PASID)] == 7
    assert decoded[("WaitDesc", None)] == 312


def test_waits_match_their_status_writes(plain: list) -> None:
    """Each wait descriptor (SW=1, data 2) is followed by QEMU's status-write event for
    the same address and data: raw and decoded views of the trace agree."""
    pending: WaitDesc | None = None
    matched = 0
    for ev in plain:
        if isinstance(ev, InvDesc) and ev.type == "wait":
            d = ev.decode(caps=QEMU_10_SM_CAPS)
            assert isinstance(d, WaitDesc) and d.sw == 1 and d.if_ == 0
            pending = d
        elif isinstance(ev, InvDescWaitSw):
            assert pending is not None
            assert (ev.addr, ev.data) == (pending.status_addr, pending.status_data) == (
                ev.addr, 2)
            pending, matched = None, matched + 1
    assert matched == 312


def test_first_and_typed_events(plain: list, full_ts: list) -> None:
    roots = [e for e in plain if isinstance(e, RegDmarRoot)]
    assert len(roots) == 1 and roots[0].scalable is True and roots[0].line == 91
    iqa = [e for e in plain if isinstance(e, RegWrite) and e.offset == 0x90]
    assert [(e.size, e.value & 0xFFF) for e in iqa] == [(8, 0x801)]  # DW=1 (256-bit), QS=1
    first = next(e for e in plain if isinstance(e, InvDesc))
    assert (first.line, first.type, first.low, first.high) == (43, "iec", 0x4, 0)
    psi = next(e for e in plain if isinstance(e, InvDesc) and e.type == "p-iotlb"
               and e.low & 0x30 == 0x30)
    d = psi.decode(caps=QEMU_10_SM_CAPS)
    assert isinstance(d, PasidIotlbInv) and d.did == 5 and d.pasid == 0 and d.am == 0
    upd = next(e for e in plain if isinstance(e, IotlbPageUpdate))
    assert upd.sid == 0x18  # virtio-rng at 00:03.0
    tr = next(e for e in plain if isinstance(e, DmarTranslate))
    assert tr.sid == 0x18 and tr.mask == 0xFFF
    sw = [e for e in full_ts if isinstance(e, SwitchAddressSpace)]
    assert len(sw) == 49 and sw[0].timestamp is not None and sw[0].pid is not None


def test_timestamped_trace(full_ts: list) -> None:
    assert all(e.timestamp is not None for e in full_ts)
    ts = [e.timestamp for e in full_ts]
    assert ts == sorted(ts)  # QEMU serialises log writes
    assert len({e.pid for e in full_ts}) > 1  # the prefix is a thread id, per vCPU/IO thread
    names = Counter(e.name for e in full_ts)
    assert names["vtd_ir_remap_msi"] == 381  # IR events parse through the generic table
    gen = next(e for e in full_ts if e.name == "vtd_ir_remap_msi")
    assert isinstance(gen, GenericEvent) and set(gen.args) == {"addr", "data", "addr2", "data2"}


def test_lines_and_files_agree(plain: list) -> None:
    assert list(iter_events(_lines(PLAIN), trace_events=TE10)) == plain


@pytest.mark.parametrize("path", [PLAIN, FULL_TS])
def test_selective_scan_equals_full_parse(path: Path) -> None:
    names = {"vtd_inv_desc", "vtd_inv_desc_wait_sw", "vtd_inv_qi_tail", "vtd_reg_write",
             "vtd_iotlb_page_update", "vtd_inv_qi_fetch", "vtd_dmar_fault"}
    full = [e for e in parse_trace_file(path, trace_events=TE10) if e.name in names]
    assert parse_trace_file(path, names=names, trace_events=TE10) == full
    assert list(iter_events(_lines(path), names=names, trace_events=TE10)) == full


def test_count_events(plain: list) -> None:
    assert count_events(PLAIN, trace_events=TE10) == summarize(plain).by_event


# ------------------------------------------------------------------ bad lines


@pytest.fixture
def corrupted(tmp_path: Path) -> Path:
    """The plain fixture with three lines damaged and one foreign line inserted."""
    lines = _lines(PLAIN)
    lines[42] = "vtd_inv_desc invalidate desc type iec high 0xZZ low 0x4\n"  # line 43
    lines[99] = "vtd_no_such_event foo\n"  # line 100
    lines.insert(200, "qemu-system-x86_64: some warning\n")  # line 201
    lines[-1] = lines[-1][:20]  # truncated last line, no newline
    out = tmp_path / "corrupt.log"
    out.write_text("".join(lines))
    return out


def test_bad_lines_are_reported_with_line_numbers(corrupted: Path) -> None:
    events = parse_trace_file(corrupted, trace_events=TE10)
    bad = [e for e in events if isinstance(e, BadLine)]
    assert [(b.line, b.name) for b in bad] == [
        (43, "vtd_inv_desc"), (100, ""), (201, ""), (11963, "")]
    assert "do not match" in bad[0].reason
    assert bad[1].reason == "unknown event"
    assert "truncated" in bad[3].reason
    assert len(events) == 11963  # nothing dropped: one event or BadLine per line


def test_strict_names_file_and_line(corrupted: Path) -> None:
    with pytest.raises(TraceParseError, match=rf"{corrupted.name}:43: arguments do not"):
        parse_trace_file(corrupted, strict=True, trace_events=TE10)


def test_selective_scan_reports_bad_lines_of_wanted_events_and_of_no_known_event(corrupted: Path) -> None:
    events = parse_trace_file(corrupted, names={"vtd_inv_desc"}, trace_events=TE10)
    bad = [e for e in events if isinstance(e, BadLine)]
    # An unknown event and a foreign line are not "another event" to skip.
    assert [(b.line, b.name) for b in bad] == [(43, "vtd_inv_desc"), (100, ""), (201, ""), (11963, "")]
    assert sum(isinstance(e, InvDesc) for e in events) == 615
    # line numbers after the inserted line shift by one, as in the full parse
    full = {e.line: e for e in parse_trace_file(corrupted, trace_events=TE10) if isinstance(e, InvDesc)}
    assert {e.line: e for e in events if isinstance(e, InvDesc)} == full


def test_bad_timestamp_prefix() -> None:
    (ev,) = iter_events(["12x@1.0:vtd_reset_exit "], trace_events=TE10)
    assert isinstance(ev, BadLine) and ev.reason == "bad timestamp prefix"


def test_typed_events_have_tail_queue_semantics(plain: list) -> None:
    tails = [e.tail for e in plain if isinstance(e, InvQiTail)]
    assert tails[0] == 0 and max(tails) < 256  # indices into a 256-entry queue


def test_every_typed_class_is_known_to_10_or_extra_or_svmvals_qemu() -> None:
    table = load_event_table(TE10)
    # svmval's own QEMU adds observability events (host_setup/qemu_build/patches/0002, 0003).
    patches = sorted((Path(__file__).resolve().parents[2] / "host_setup/qemu_build/patches").glob("*.patch"))
    added = {m.group(1) for p in patches for m in re.finditer(r"^\+(vtd_\w+)\(", p.read_text(), re.M)}
    assert added == {"vtd_ats_translate", "vtd_prq_desc", "vtd_fs_walk_entry", "vtd_iotlb_hit_source"}
    assert set(TYPED_BY_NAME) <= set(table.formats) | added
