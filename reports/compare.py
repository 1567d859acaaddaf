"""Across runs: `--compare OLD NEW` (what broke, what was fixed, what got slower)
and `--trend DIR` (one row per run in a folder of bundles)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from markupsafe import Markup
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.errors import SvmvalError
from reports.bundle import Verdict
from reports.html import environment
from reports.plots import trend_plot
from reports.view import FAILING, Outcome, RunView, WorkloadRow, find_bundles, load_run

# A change smaller than this is run-to-run noise on a shared TCG machine, not a trend.
REGRESSION_PCT = 10.0


class Change(StrEnum):
    NEW_FAILURE = "new failure"
    FIXED = "fixed"
    STILL_FAILING = "still failing"
    # Failing before and skipped or gone now is not "fixed": nobody judged it.
    NOT_JUDGED = "failed before, not judged now"
    NEW = "new"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class VerdictChange:
    key: str
    old: Verdict | None
    new: Verdict | None
    change: Change
    message: str  # the newest reason/summary


@dataclass(frozen=True)
class PerfDelta:
    metric: str
    unit: str
    old: float
    new: float
    higher_is_better: bool

    @property
    def pct(self) -> float | None:
        return None if self.old == 0 else (self.new - self.old) / abs(self.old) * 100.0

    @property
    def regression(self) -> bool:
        pct = self.pct
        if pct is None:
            return False
        return pct < -REGRESSION_PCT if self.higher_is_better else pct > REGRESSION_PCT


@dataclass
class Comparison:
    old_id: str
    new_id: str
    changes: list[VerdictChange]
    deltas: list[PerfDelta]

    def of(self, change: Change) -> list[VerdictChange]:
        return [c for c in self.changes if c.change == change]


def _keyed(outcomes: list[Outcome]) -> dict[str, Outcome]:
    """Outcomes by key; a repeated key (two checks of one name and workload) gets a
    #n suffix so neither hides the other."""
    seen: Counter[str] = Counter()
    out = {}
    for o in outcomes:
        seen[o.key] += 1
        out[o.key if seen[o.key] == 1 else f"{o.key}#{seen[o.key]}"] = o
    return out


def _classify(old: Verdict | None, new: Verdict | None) -> Change:
    was, now = old in FAILING, new in FAILING
    if now:
        return Change.STILL_FAILING if was else Change.NEW_FAILURE
    if was:
        return Change.FIXED if new == Verdict.PASS else Change.NOT_JUDGED
    return Change.NEW if old is None else Change.UNCHANGED


def _ratios(w: WorkloadRow, host: dict[str, dict[str, float]]) -> dict[str, float]:
    """guest/host per flavour: as the run attached it, else from the bundle's host run."""
    if w.bandwidth_ratio:
        return dict(w.bandwidth_ratio)
    h = host.get(w.name, {})
    return {k: v / h[k] for k, v in w.bandwidth.items() if h.get(k)}


def _metrics(run: RunView) -> dict[str, tuple[float, str, bool]]:
    """metric -> (value, unit, higher_is_better)"""
    m: dict[str, tuple[float, str, bool]] = {}
    host = {w.name: w.bandwidth for w in run.workloads_host}
    for w in run.workloads:
        m |= {f"{w.name} time {k}": (v, "s", False) for k, v in w.timings.items()}
        m |= {f"{w.name} bandwidth {k}": (v, "GB/s", True) for k, v in w.bandwidth.items()}
        m |= {f"{w.name} bandwidth ratio {k}": (v, "guest/host", True) for k, v in _ratios(w, host).items()}
    m |= {f"phase {k}": (v, "s", False) for k, v in run.manifest.durations.items()}
    total = run.duration_s()
    if total is not None:
        m["run duration"] = (total, "s", False)
    return m


def compare_runs(old: RunView, new: RunView) -> Comparison:
    before, after = _keyed(old.outcomes()), _keyed(new.outcomes())
    changes = []
    for key in [*before, *(k for k in after if k not in before)]:
        o, n = before.get(key), after.get(key)
        ov, nv = (o.verdict if o else None), (n.verdict if n else None)
        changes.append(VerdictChange(key, ov, nv, _classify(ov, nv),
                                     (n.message if n else o.message if o else "")))
    mo, mn = _metrics(old), _metrics(new)
    deltas = [PerfDelta(k, mn[k][1], mo[k][0], mn[k][0], mn[k][2]) for k in mo if k in mn]
    return Comparison(old.run_id, new.run_id, changes, deltas)


def _v(v: Verdict | None) -> str:
    return v.value if v else "absent"


def _pct(d: PerfDelta) -> str:
    return "n/a" if d.pct is None else f"{d.pct:+.1f}%"


def print_comparison(c: Comparison, console: Console) -> None:
    table = Table(title=f"verdicts: {c.old_id} -> {c.new_id}")
    for col in ("change", "testcase", "old", "new", "reason now"):
        table.add_column(col)
    style = {Change.NEW_FAILURE: "bold red", Change.FIXED: "green", Change.STILL_FAILING: "red",
             Change.NOT_JUDGED: "yellow", Change.NEW: "cyan"}
    shown = [ch for ch in c.changes if ch.change != Change.UNCHANGED]
    for ch in sorted(shown, key=lambda ch: list(Change).index(ch.change)):
        table.add_row(ch.change.value, escape(ch.key), _v(ch.old), _v(ch.new), escape(ch.message),
                      style=style.get(ch.change))
    console.print(table)
    console.print(f"{len(c.changes) - len(shown)} testcase(s) unchanged.")
    if c.deltas:
        perf = Table(title=f"performance (regression: beyond {REGRESSION_PCT:g}% worse)")
        for col in ("metric", "old", "new", "change"):
            perf.add_column(col, justify="left" if col == "metric" else "right")
        for d in c.deltas:
            perf.add_row(escape(d.metric), f"{d.old:.4g} {d.unit}", f"{d.new:.4g} {d.unit}", _pct(d),
                         style="red" if d.regression else None)
        console.print(perf)


def comparison_html(c: Comparison) -> str:
    return environment().get_template("compare.html.j2").render(
        mode="compare", c=c, Change=Change, changed=[ch for ch in c.changes
                                                      if ch.change != Change.UNCHANGED],
        fmt_v=_v, fmt_pct=_pct, threshold=REGRESSION_PCT)


@dataclass(frozen=True)
class TrendRow:
    path: Path
    run_id: str
    started: str
    verdict: Verdict
    counts: dict[str, int]
    duration_s: float | None
    phases: dict[str, float]


@dataclass
class Trend:
    rows: list[TrendRow]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def phase_names(self) -> list[str]:
        return list(dict.fromkeys(k for r in self.rows for k in r.phases))


def trend(root: Path) -> Trend:
    if not root.is_dir():
        raise SvmvalError(f"{root} is not a directory; pass the folder that holds the run bundles")
    t = Trend([])
    for path in find_bundles(root):
        try:
            run = load_run(path)
        except SvmvalError as exc:  # one bad bundle must not hide the others
            t.unreadable.append((path, str(exc)))
            continue
        t.rows.append(TrendRow(path, run.run_id, run.manifest.started, run.manifest.verdict,
                               run.counts(), run.duration_s(), dict(run.manifest.durations)))
    t.rows.sort(key=lambda r: r.started)
    return t


def print_trend(t: Trend, console: Console) -> None:
    table = Table(title=f"trend over {len(t.rows)} run(s)")
    for col in ("started", "run", "verdict", "pass", "fail", "error", "skip", "duration",
                *t.phase_names):
        table.add_column(col)
    for r in t.rows:
        table.add_row(r.started, escape(r.run_id), r.verdict.value,
                      *(str(r.counts[k]) for k in ("pass", "fail", "error", "skip")),
                      "-" if r.duration_s is None else f"{r.duration_s:.1f} s",
                      *(f"{r.phases[p]:.1f} s" if p in r.phases else "-" for p in t.phase_names),
                      style="red" if r.verdict in FAILING else None)
    console.print(table)
    for path, why in t.unreadable:
        console.print(f"[yellow]skipped {escape(str(path))}:[/] {escape(why)}", highlight=False)


def trend_html(t: Trend) -> str:
    plot = trend_plot([r.started[:16] for r in t.rows], [r.counts["pass"] for r in t.rows],
                      [r.counts["fail"] + r.counts["error"] for r in t.rows],
                      [r.duration_s for r in t.rows])
    return environment().get_template("compare.html.j2").render(
        mode="trend", t=t, plot=plot, plot_uri=Markup(plot.data_uri))
