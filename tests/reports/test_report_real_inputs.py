"""Reports from inputs other areas produce for real: the workloads runner's own JSON
and the trace fixtures under tests/fixtures/traces/. Each skips, naming what is
missing, until that area has landed; then it runs with no change here."""

from __future__ import annotations

import gzip
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest
from report_bundles import BundleFactory

from reports.html import render_html
from reports.junit import build_junit
from reports.tracedata import read_qi
from reports.view import load_run

REPO = Path(__file__).resolve().parents[2]
TRACES = REPO / "tests" / "fixtures" / "traces"


def _trace_fixtures() -> list[Path]:
    if not TRACES.is_dir():
        return []
    return sorted(p for p in TRACES.iterdir() if p.name.endswith((".log", ".log.gz", ".log.xz", ".trace", ".trace.xz")))


def _formats_of(name: str) -> str:
    if name.startswith("qemu11"):
        return "qemu11.1.3-vtd-trace-events"
    if name.startswith("svmval-sva-prq"):
        return "qemu10.2.2-svmval-vtd-trace-events"  # patches 0001-0002
    if name.startswith("svmval-"):
        return "qemu10.2.2-svmval0003-vtd-trace-events"
    return "qemu10.0.2-vtd-trace-events"


def _read(p: Path) -> str:
    raw = p.read_bytes()
    if p.suffix == ".gz":
        raw = gzip.decompress(raw)
    elif p.suffix == ".xz":
        raw = lzma.decompress(raw)
    return raw.decode(errors="replace")


def test_report_from_a_real_workloads_run(make_bundle: BundleFactory, tmp_path: Path) -> None:
    out = tmp_path / "workloads.json"
    proc = subprocess.run([sys.executable, "-m", "workloads", "run", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert out.exists(), f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    doc = json.loads(out.read_text())
    bundle = make_bundle(workloads=doc, host_run=False)
    run = load_run(bundle)
    assert [w.name for w in run.workloads] == [r["name"] for r in doc["results"]]
    root = build_junit(run).getroot()
    assert root is not None
    suite = root.find("testsuite")
    assert suite is not None
    cases = [c for c in suite.iter("testcase") if c.get("classname") == "workloads"]
    assert len(cases) == len(doc["results"])
    assert sum(c.find("failure") is not None for c in cases) == sum(
        r["verdict"] == "fail" for r in doc["results"])
    html = render_html(run)
    for r in doc["results"]:
        assert f"<code>{r['name']}</code>" in html


@pytest.mark.parametrize("fixture", _trace_fixtures(), ids=lambda p: p.name)
def test_qi_plot_from_the_shared_trace_fixtures(fixture: Path, tmp_path: Path) -> None:
    text = _read(fixture)
    (tmp_path / "trace.log").write_text(text)
    # Each fixture is read with the formats of the QEMU that wrote it (README.md there).
    qi = read_qi(tmp_path / "trace.log", TRACES / _formats_of(fixture.name))
    # Independent of the parser: the raw-descriptor wording both versions print, after
    # no prefix, QEMU 10's "PID@SECONDS:" or QEMU 11's "ISO-TIME " (fraction or not).
    expected = sum(ln.startswith("vtd_inv_desc invalidate desc type ")
                   or ":vtd_inv_desc invalidate desc type " in ln
                   or "Z vtd_inv_desc invalidate desc type " in ln for ln in text.split("\n"))
    assert len(qi.descriptors) == expected
    assert expected > 0 or fixture.name.endswith(("-fault.trace", "-faults.trace"))  # faults only: none
