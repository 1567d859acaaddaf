"""`svmval report`: re-render a bundle, compare two, or show a trend.

Wired into harness/cli.py with `cli.add_command(report)`.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from harness.errors import ConfigError
from reports.compare import (
    compare_runs,
    comparison_html,
    print_comparison,
    print_trend,
    trend,
    trend_html,
)
from reports.render import render_bundle
from reports.view import load_run

_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_OUT = click.Path(dir_okay=False, path_type=Path)


@click.command("report")
@click.argument("bundle", required=False, type=_DIR)
@click.option("--out", type=_OUT, help="HTML report path (default: BUNDLE/report.html)")
@click.option("--junit", type=_OUT, help="JUnit XML path (default: BUNDLE/junit.xml)")
@click.option("--compare", nargs=2, type=_DIR, metavar="OLD NEW",
              help="compare two bundles: new failures, fixed, still failing, perf deltas")
@click.option("--trend", "trend_dir", type=_DIR, metavar="DIR",
              help="one row per bundle found in DIR (and its subdirectories)")
@click.option("--html", "html_out", type=_OUT,
              help="with --compare/--trend: also write the tables as an HTML page")
def report(
    bundle: Path | None,
    out: Path | None,
    junit: Path | None,
    compare: tuple[Path, Path] | None,
    trend_dir: Path | None,
    html_out: Path | None,
) -> None:
    """Render a run's bundle into report.html and junit.xml, or compare runs."""
    modes = [m for m in (bundle, compare, trend_dir) if m]
    if len(modes) != 1:
        raise ConfigError(
            "svmval report: give exactly one of BUNDLE, --compare OLD NEW, --trend DIR"
        )
    if html_out and bundle:
        raise ConfigError(
            "svmval report: --html goes with --compare/--trend; use --out for a bundle"
        )
    if (out or junit) and not bundle:
        raise ConfigError("svmval report: --out/--junit go with BUNDLE")
    console = Console()
    if bundle:
        html_path, junit_path = render_bundle(bundle, html_out=out, junit_out=junit)
        run = load_run(bundle)
        counts = run.counts()
        console.print(escape(f"run {run.run_id}: {run.manifest.verdict.value} "
                      f"({counts['pass']} pass, {counts['fail']} fail, {counts['error']} error, "
                      f"{counts['skip']} skip)"), highlight=False)
        console.print(escape(f"wrote {html_path}\nwrote {junit_path}"), highlight=False)
        return
    if compare:
        c = compare_runs(load_run(compare[0]), load_run(compare[1]))
        print_comparison(c, console)
        page = comparison_html(c) if html_out else None
    else:
        assert trend_dir is not None
        t = trend(trend_dir)
        print_trend(t, console)
        page = trend_html(t) if html_out else None
    if html_out and page is not None:
        html_out.parent.mkdir(parents=True, exist_ok=True)
        html_out.write_text(page, encoding="utf-8")
        console.print(escape(f"wrote {html_out}"), highlight=False)
