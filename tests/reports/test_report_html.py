"""report.html from bundles built on a real QEMU vtd_* trace."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

from report_bundles import FIXTURES, KEY_BODY, PASSWORD, TOKEN, BundleFactory, ConsoleFacts, TraceFacts, workloads_doc

from reports.bundle import Bundle
from reports.html import render_html
from reports.render import render_bundle
from reports.view import load_run


class PageIndex(HTMLParser):
    """ids, local links, images and scripts of a page, plus the text of each id'd
    element (enough to check that an anchor shows the line it names)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []
        self.imgs: list[str] = []
        self.scripts = 0
        self.external: list[str] = []
        self.text_of: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"] or "")
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if tag == "script":
            self.scripts += 1
        for k in ("src", "href"):
            v = a.get(k) or ""
            if re.match(r"(?i)(https?:)?//", v):
                self.external.append(v)
        if tag == "div":
            self._open.append((tag, a.get("id")))
            if a.get("id"):
                self.text_of[a["id"] or ""] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self.text_of[ident] += data


def index(html: str) -> PageIndex:
    p = PageIndex()
    p.feed(html)
    return p


def test_report_shows_verdicts_traffic_and_header(make_bundle: BundleFactory) -> None:
    run = load_run(make_bundle())
    html = render_html(run)
    # Header facts come from the manifest, verbatim.
    for fact in ("6.12.117+deb12-amd64", "10.0.2 (Debian", "pthread-haswell-QEMU TCG CPU",
                 run.manifest.git["rev"], run.manifest.guest["image_digest"], "3 min 30 s"):
        assert fact in html, fact
    assert '<span class="badge v-fail">fail</span></h1>' in html
    # One row per workload and per check, each with its verdict badge.
    rows = re.findall(r'<tr class="[^"]*">\s*<td><code>([^<]+)</code></td>\s*'
                      r'<td>(?:[^<]*</td>\s*<td>)?<span class="badge v-(\w+)"', html)
    assert ("saxpy-coarse", "pass") in rows
    assert ("fine-buffer-atomics", "fail") in rows
    assert ("fine-system", "skip") in rows
    assert ("boot", "error") in rows
    assert html.count('<span class="traffic modelled"') >= 2  # both prq checks, plus the legend
    assert "3 passed" in html and "3 failed" in html and "1 errors" in html and "2 skipped" in html


def test_every_local_link_resolves_and_excerpts_show_the_named_lines(
    make_bundle: BundleFactory, trace_facts: TraceFacts, console_facts: ConsoleFacts
) -> None:
    page = index(render_html(load_run(make_bundle())))
    local = [h[1:] for h in page.hrefs if h.startswith("#")]
    assert local, "no in-page links at all"
    missing = [h for h in local if h not in page.ids]
    assert not missing, f"links without a target: {missing}"
    trace_links = {h for h in local if h.startswith("trace-L")}
    console_links = {h for h in local if h.startswith("console-L")}
    first = trace_facts.piotlb[0]
    assert {f"trace-L{first}", f"trace-L{trace_facts.next_translate(first)}"} <= trace_links
    assert f"console-L{console_facts.workload_line}" in console_links
    # The anchor shows the very line of the file it names (line numbering survives
    # CR-heavy consoles and the masking of a multi-line key just above).
    assert page.text_of[f"trace-L{first}"] == f"{first}{trace_facts.lines[first - 1]}"
    assert page.text_of[f"console-L{console_facts.workload_line}"].endswith(
        "svmval: workload saxpy-fine pass")
    # ±3 lines of context are there too.
    assert f"trace-L{first - 3}" in page.ids and f"trace-L{first + 3}" in page.ids
    assert f"trace-L{first - 4}" not in page.ids
    # A reference past the end of the file is shown, not linked.
    assert "trace-L999999" not in local


def test_page_is_self_contained_with_embedded_plots(make_bundle: BundleFactory) -> None:
    doc = workloads_doc()
    # Real svmval-sva results (fixtures/sva-results.json names the run) feed the device plot.
    results = doc["results"]
    assert isinstance(results, list)
    doc["results"] = [*results, *json.loads((FIXTURES / "sva-results.json").read_text())["results"]]
    html = render_html(load_run(make_bundle(workloads=doc)))
    page = index(html)
    assert page.scripts == 0
    assert page.external == []
    assert "url(" not in html  # no CSS fetches either
    pngs = [s for s in page.imgs if s.startswith("data:image/png;base64,")]
    assert len(pngs) == len(page.imgs) == 7  # QI mix, inv-to-use, PRQ, latency, device, translation, bw
    assert "607 page requests, 1641 ats requests, 148 atc hits, 1034 atc misses" in html
    assert all(len(s) > 2000 for s in pngs)
    assert "Not drawn" not in html
    assert "136 descriptors in 3037 trace lines" in html


def test_absent_data_gives_a_note_not_a_chart(make_bundle: BundleFactory) -> None:
    bundle = make_bundle(trace=False, host_run=False, plots_data=False, workloads={
        "schema": "svmval.workloads/1", "host": {}, "device": {},
        "results": [{"name": "saxpy-coarse", "verdict": "pass", "reason": ""}]})
    html = render_html(load_run(bundle))
    page = index(html)
    assert "Not drawn: the bundle has no trace.log" in html
    assert "Not drawn: no check recorded data[&#39;inv_to_use&#39;]" in html
    assert "Not drawn: no response timestamps" in html
    assert "Not drawn: no workload result carries &#39;bandwidth&#39;" in html
    # PRQ counts and translation checks are still there: two real charts.
    assert len(page.imgs) == 2
    # Trace references cannot be shown, so they are not links, and the page says why.
    assert not [h for h in page.hrefs if h.startswith("#trace-L")]
    assert "(not in the bundle's trace.log)" in html
    assert "The bundle has no trace.log" in html


def test_secrets_planted_in_inputs_never_reach_the_outputs(make_bundle: BundleFactory) -> None:
    bundle = make_bundle()
    raw = "".join(p.read_text() for p in bundle.iterdir())
    assert PASSWORD in raw and KEY_BODY in raw and TOKEN in raw  # planted, unmasked
    html_path, junit_path = render_bundle(bundle)
    for out in (html_path, junit_path):
        text = out.read_text()
        for secret in (PASSWORD, KEY_BODY, TOKEN, "BEGIN OPENSSH PRIVATE KEY"):
            assert secret not in text, f"{secret} leaked into {out.name}"
        assert "password=[masked]" in text
        assert "token=[masked]" in text
    assert "[private key masked]" in html_path.read_text()  # the key sits in an excerpt


def test_render_bundle_writes_into_the_bundle_and_names_the_files(make_bundle: BundleFactory,
                                                                   tmp_path: Path) -> None:
    bundle = make_bundle()
    html_path, junit_path = render_bundle(bundle)
    assert (html_path, junit_path) == (bundle / "report.html", bundle / "junit.xml")
    files = Bundle.open(bundle).manifest.files
    assert files["report"] == "report.html" and files["junit"] == "junit.xml"
    # Elsewhere: written there, and the manifest does not claim them.
    other = make_bundle("other")
    out_html, out_junit = render_bundle(other, html_out=tmp_path / "x" / "r.html",
                                        junit_out=tmp_path / "x" / "j.xml")
    assert out_html.exists() and out_junit.exists()
    assert "report" not in Bundle.open(other).manifest.files


def test_preflight_rows_say_yes_no_or_note_as_the_verdict_does(make_bundle: BundleFactory) -> None:
    html = render_html(load_run(make_bundle()))
    found = re.findall(r'<tr class="([^"]*)"><td>(?:qemu|kvm|QEMU 11 from sid)</td><td>(\w+)</td>', html)
    rows = {mark: cls for cls, mark in found}
    # ok True -> yes; ok False -> no, marked failing; ok None (a note) -> note, not failing
    assert rows == {"yes": "", "no": "failing", "note": ""}


def test_a_qemu11_bundle_draws_the_descriptor_mix(make_bundle: BundleFactory) -> None:
    # The trace of QEMU 11.1.3 (ISO timestamps, one whole-second line) with the formats
    # the run keeps beside it, as harness/run.py writes them into vm/trace-formats.
    traces = Path(__file__).resolve().parents[1] / "fixtures" / "traces"
    path = make_bundle()
    bundle = Bundle.open(path)
    (path / "trace.log").write_text((traces / "qemu11-whole-second.trace").read_text())
    (path / "trace-formats").write_text((traces / "qemu11.1.3-vtd-trace-events").read_text())
    bundle.manifest.files["trace-formats"] = "trace-formats"
    bundle.save()
    html = render_html(load_run(path))
    section = html[html.index('id="plot-qi-mix"'):].split("</figure>")[0]
    assert "Not drawn" not in section and "<img" in section
    assert "67 descriptors in 201 trace lines" in section
