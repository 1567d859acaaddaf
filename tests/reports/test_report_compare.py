"""--compare and --trend, and the `svmval report` command."""

from __future__ import annotations

import io
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from report_bundles import BundleFactory, ConsoleFacts, TraceFacts, checks_for
from rich.console import Console

from harness.errors import ConfigError
from reports.bundle import Bundle, CheckResult, Verdict
from reports.cli import report
from reports.compare import (
    Change,
    compare_runs,
    comparison_html,
    print_comparison,
    trend,
    trend_html,
)
from reports.view import load_run


def _with_verdicts(tf: TraceFacts, cf: ConsoleFacts, **verdicts: Verdict) -> list[CheckResult]:
    """The standard checks with some verdicts replaced, keyed name_workload."""
    out = []
    for c in checks_for(tf, cf):
        key = f"{c.name}_{c.workload or 'run'}".replace("-", "_")
        out.append(replace(c, verdict=verdicts.get(key, c.verdict)))
    return out


@pytest.fixture
def old_new(make_bundle: BundleFactory, trace_facts: TraceFacts,
            console_facts: ConsoleFacts) -> tuple[Path, Path]:
    old = make_bundle("old", started="2025-11-23T10:00:00+00:00",
                      finished="2025-11-23T10:03:00+00:00",
                      checks=_with_verdicts(trace_facts, console_facts,
                                            translation_saxpy_coarse=Verdict.FAIL))
    new = make_bundle("new", scale=1.5,
                      checks=_with_verdicts(trace_facts, console_facts,
                                            qi_completeness_run=Verdict.PASS,
                                            boot_run=Verdict.SKIP,
                                            prq_saxpy_coarse=Verdict.FAIL))
    return old, new


def test_compare_classifies_changes_and_perf(old_new: tuple[Path, Path]) -> None:
    c = compare_runs(load_run(old_new[0]), load_run(old_new[1]))
    keys = {ch.change: sorted(x.key for x in c.of(ch.change)) for ch in c.changes}
    assert keys[Change.NEW_FAILURE] == ["checks.prq::saxpy-coarse"]
    assert keys[Change.FIXED] == ["checks.qi-completeness::run", "checks.translation::saxpy-coarse"]
    assert keys[Change.STILL_FAILING] == ["checks.translation::fine-buffer-atomics",
                                          "workloads::fine-buffer-atomics"]
    assert keys[Change.NOT_JUDGED] == ["checks.boot::run"]
    deltas = {d.metric: d for d in c.deltas}
    build = deltas["saxpy-coarse time build"]
    assert build.old == pytest.approx(10.1) and build.new == pytest.approx(15.15)
    assert build.pct == pytest.approx(50.0) and build.regression
    bw = deltas["saxpy-coarse bandwidth coarse"]
    assert bw.pct == pytest.approx(50.0) and not bw.regression  # more bandwidth is better
    assert deltas["run duration"].pct == pytest.approx((210 - 180) / 180 * 100)

    buf = io.StringIO()
    print_comparison(c, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "new failure" in text and "checks.prq::saxpy-coarse" in text and "+50.0%" in text
    html = comparison_html(c)
    assert "<script" not in html and "checks.prq::saxpy-coarse" in html and "+50.0%" in html


def test_trend_over_a_folder(make_bundle: BundleFactory, tmp_path: Path) -> None:
    day = "2025-11-{}T10:{}:00+00:00"
    make_bundle("b-second", started=day.format(24, "00"), finished=day.format(24, "04"),
                durations={"boot": 5.0, "workloads": 60.0})
    make_bundle("a-third", started=day.format(25, "00"), finished=day.format(25, "02"))
    make_bundle("c-first", started=day.format(23, "00"), finished=day.format(23, "01"), checks=[])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text('{"schema": "svmval.bundle/0"}')
    t = trend(tmp_path)
    assert [r.run_id for r in t.rows] == ["c-first", "b-second", "a-third"]
    assert [r.counts["fail"] for r in t.rows] == [1, 3, 3]  # c-first: only its workload failed
    assert [r.duration_s for r in t.rows] == [60.0, 240.0, 120.0]
    assert t.phase_names == ["image", "boot", "workloads"]
    assert [p for p, _ in t.unreadable] == [tmp_path / "broken"]
    html = trend_html(t)
    assert "data:image/png;base64," in html and "b-second" in html and "svmval.bundle/0" in html


def test_cli_renders_a_bundle(make_bundle: BundleFactory) -> None:
    bundle = make_bundle()
    (bundle / "report.html").unlink(missing_ok=True)
    result = CliRunner().invoke(report, [str(bundle)])
    assert result.exit_code == 0, result.output
    assert "run run: fail (3 pass, 3 fail, 1 error, 2 skip)" in result.output
    assert (bundle / "report.html").stat().st_size > 10_000
    assert (bundle / "junit.xml").exists()
    assert Bundle.open(bundle).manifest.files["report"] == "report.html"


def test_cli_compare_and_trend_write_html(old_new: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp.html"
    result = CliRunner().invoke(report, ["--compare", str(old_new[0]), str(old_new[1]),
                                         "--html", str(out)])
    assert result.exit_code == 0, result.output
    assert "new failure" in result.output and out.read_text().startswith("<!DOCTYPE html>")
    out2 = tmp_path / "trend.html"
    result = CliRunner().invoke(report, ["--trend", str(tmp_path), "--html", str(out2)])
    assert result.exit_code == 0, result.output
    assert "trend over 2 run(s)" in result.output and out2.exists()


@pytest.mark.parametrize("args", [
    [],  # nothing to do
    ["{bundle}", "--html", "x.html"],  # --html is for --compare/--trend
    ["--out", "x.html", "--trend", "{parent}"],  # --out is for a bundle
    ["{bundle}", "--trend", "{parent}"],  # two modes at once
], ids=["nothing", "html-with-bundle", "out-with-trend", "two-modes"])
def test_cli_rejects_bad_combinations(args: list[str], make_bundle: BundleFactory) -> None:
    bundle = make_bundle()
    argv = [a.format(bundle=bundle, parent=bundle.parent) for a in args]
    result = CliRunner().invoke(report, argv)
    assert isinstance(result.exception, ConfigError), result.output


def test_cli_reports_a_non_bundle_as_a_config_error(tmp_path: Path) -> None:
    shutil.rmtree(tmp_path, ignore_errors=True)
    tmp_path.mkdir()
    result = CliRunner().invoke(report, [str(tmp_path)])
    assert isinstance(result.exception, ConfigError)
    assert "no manifest.json" in str(result.exception)
