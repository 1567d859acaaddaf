"""report.html: one self-contained page per run (inline CSS, PNGs as data: URIs,
no scripts, no external requests), so it can be mailed or attached to a CI job and
still show the evidence behind every failure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from reports.bundle import Finding, mask_secrets
from reports.excerpts import CONTEXT, SourceExcerpts, build_excerpts
from reports.plots import Plot, all_plots, qi_for
from reports.view import Outcome, RunView

TEMPLATES = Path(__file__).parent / "templates"


def _finalize(value: Any) -> Any:
    # Every {{ expression }} passes here: the one place that guarantees no text
    # reaches the page unmasked, whoever adds a field to the template later.
    # Markup is ours (data: URIs), already safe and never holds user text.
    if isinstance(value, str) and not isinstance(value, Markup):
        return mask_secrets(value)
    return value


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        finalize=_finalize,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = format_duration
    env.filters["num"] = lambda v: f"{v:.4g}" if isinstance(v, float) else v
    return env


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


@dataclass(frozen=True)
class LineRef:
    role: str  # "trace" | "console"
    number: int
    linked: bool  # False: the file does not have this line (or is absent)

    @property
    def anchor(self) -> str:
        return f"{self.role}-L{self.number}"


@dataclass(frozen=True)
class FindingView:
    message: str
    refs: tuple[LineRef, ...]


@dataclass(frozen=True)
class FindingGroup:
    anchor: str
    outcome: Outcome
    findings: tuple[FindingView, ...]


def _finding_view(f: Finding, trace: SourceExcerpts, console: SourceExcerpts) -> FindingView:
    refs = [LineRef("trace", n, trace.has(n)) for n in f.trace_lines]
    refs += [LineRef("console", n, console.has(n)) for n in f.console_lines]
    return FindingView(f.message, tuple(refs))


def render_html(run: RunView) -> str:
    outcomes = run.outcomes()
    trace_refs = {n for o in outcomes for f in o.findings for n in f.trace_lines}
    console_refs = {n for o in outcomes for f in o.findings for n in f.console_lines}
    trace = build_excerpts("trace", "trace.log", run.file("trace"), trace_refs)
    console = build_excerpts("console", "console.log", run.file("console"), console_refs)

    # Failing outcomes first, then anything else that carries findings. Anchors use
    # the outcome's position: two checks may share a name and workload.
    shown = sorted((i for i, o in enumerate(outcomes) if o.findings or o.failing),
                   key=lambda i: not outcomes[i].failing)
    groups = [
        FindingGroup(f"finding-{i}", outcomes[i],
                     tuple(_finding_view(f, trace, console) for f in outcomes[i].findings))
        for i in shown
    ]
    rows = [(o, f"finding-{i}" if i in shown else None) for i, o in enumerate(outcomes)]

    qi, qi_absent = qi_for(run.file("trace"), run.file("trace-formats"))
    plots: list[Plot] = all_plots(run, qi, qi_absent)
    host_bw = {w.name: w.bandwidth for w in run.workloads_host}
    workload_rows = [
        (w, o, anchor, host_bw.get(w.name, {}))
        for w, (o, anchor) in zip(run.workloads, (r for r in rows if r[0].kind == "workload"),
                                  strict=True)
    ]
    return environment().get_template("report.html.j2").render(
        manifest=run.manifest,
        facts=run.environment(),
        counts=run.counts(),
        duration=run.duration_s(),
        run_errors=[r for r in rows if r[0].kind == "run"],
        workload_rows=workload_rows,
        check_rows=[r for r in rows if r[0].kind == "check"],
        groups=groups,
        excerpts=[trace, console],
        plots=plots,
        plot_uri={p.anchor: Markup(p.data_uri) for p in plots},
        preflight=run.preflight,
        context=CONTEXT,
    )


def write_html(run: RunView, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(run), encoding="utf-8")
    return out
