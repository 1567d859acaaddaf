"""The report's charts, as PNG data: URIs (the page must be one self-contained file).

Every function returns a Plot; when its data is absent the Plot carries a one-line
note saying what was missing instead of an image. A chart is never drawn from
placeholder numbers.
"""

from __future__ import annotations

import base64
import io
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The object-oriented API with an explicit Agg canvas: no pyplot global state, no
# display needed, safe to call from a run's teardown.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reports.bundle import DATA_INV_TO_USE, DATA_INV_TO_USE_UNIT, DATA_PRQ_LATENCY_US, Verdict
from reports.tracedata import QiTrace, TraceParseError, read_qi
from reports.view import RunView, WorkloadRow

BUCKETS = 40
COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
          "#8c8c8c", "#ccb974", "#64b5cd"]


@dataclass(frozen=True)
class Plot:
    anchor: str  # element id in the page
    title: str
    png_b64: str | None = None
    missing: str | None = None  # why there is no chart
    caption: str = ""

    @property
    def data_uri(self) -> str:
        return f"data:image/png;base64,{self.png_b64}" if self.png_b64 else ""


def _figure(height: float = 3.2, bars: int | None = None) -> Figure:
    # Categorical charts grow with their number of bars: one fat bar across 900 px
    # reads as a rendering error.
    width = 9.0 if bars is None else min(9.0, 3.0 + 1.5 * bars)
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def qi_mix(qi: QiTrace | None, why_absent: str) -> Plot:
    anchor, title = "plot-qi-mix", "QI descriptor mix over the trace"
    if qi is None:
        return Plot(anchor, title, missing=why_absent)
    if not qi.descriptors:
        return Plot(anchor, title, missing=f"trace.log ({qi.total_lines} lines) has no "
                    "vtd_inv_desc lines: was the trace captured with -trace 'vtd_*'?")
    width = max(1, math.ceil(qi.total_lines / BUCKETS))
    n_buckets = math.ceil(qi.total_lines / width)
    per_type: dict[str, list[int]] = defaultdict(lambda: [0] * n_buckets)
    for d in qi.descriptors:
        per_type[d.type][min(n_buckets - 1, (d.line - 1) // width)] += 1
    totals = Counter(d.type for d in qi.descriptors)
    fig = _figure()
    ax = fig.add_subplot()
    xs = [i * width + 1 for i in range(n_buckets)]
    bottom = [0] * n_buckets
    for i, (kind, _) in enumerate(totals.most_common()):
        ys = per_type[kind]
        ax.bar(xs, ys, width=width * 0.9, bottom=bottom, align="edge",
               color=COLORS[i % len(COLORS)], label=f"{kind} ({totals[kind]})")
        bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    ax.set_xlabel(f"trace.log line (buckets of {width} lines)")
    ax.set_ylabel("descriptors")
    ax.set_xlim(1, qi.total_lines + 1)
    # Above the axes, not over the bars.
    fig.legend(loc="outside upper center", fontsize="small", ncols=min(5, len(totals)))
    return Plot(anchor, title, _png(fig),
                caption=f"{len(qi.descriptors)} descriptors in {qi.total_lines} trace lines")


def _histogram(values: Sequence[float], xlabel: str) -> str:
    fig = _figure(2.8)
    ax = fig.add_subplot()
    ax.hist(values, bins=min(30, max(5, len(set(values)))), color=COLORS[0], edgecolor="white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return _png(fig)


def _series(run: RunView, key: str) -> tuple[list[float], list[str]]:
    """All numbers under data[key] across checks, and the checks they came from."""
    values: list[float] = []
    sources: list[str] = []
    for c in run.checks:
        raw = c.data.get(key)
        if isinstance(raw, list):
            nums = [float(v) for v in raw if isinstance(v, int | float) and not isinstance(v, bool)]
            if nums:
                values += nums
                sources.append(c.name + (f"[{c.workload}]" if c.workload else ""))
    return values, sources


def inv_to_use(run: RunView) -> Plot:
    anchor, title = "plot-inv-to-use", "Invalidation-to-use distance"
    values, sources = _series(run, DATA_INV_TO_USE)
    if not values:
        return Plot(anchor, title, missing=f"no check recorded data[{DATA_INV_TO_USE!r}] "
                    "(the QI check writes it when it measures distances)")
    units = {str(c.data.get(DATA_INV_TO_USE_UNIT)) for c in run.checks
             if DATA_INV_TO_USE in c.data and c.data.get(DATA_INV_TO_USE_UNIT)}
    unit = units.pop() if len(units) == 1 else "mixed units" if units else "unit not recorded"
    return Plot(anchor, title, _histogram(values, f"distance ({unit})"),
                caption=f"{len(values)} invalidations, from {', '.join(sources)}; "
                f"min {min(values):g}, median {sorted(values)[len(values) // 2]:g}, "
                f"max {max(values):g}")


def page_requests(run: RunView) -> list[Plot]:
    anchor, title = "plot-prq", "Page requests per workload"
    prq = [c for c in run.checks if c.name.startswith("prq")]
    if not prq:
        return [Plot(anchor, title, missing="checks.json has no prq check")]
    counted = [c for c in prq if "page_requests" in c.counts]
    plots: list[Plot] = []
    if counted:
        fig = _figure(2.8, bars=len(counted))
        ax = fig.add_subplot()
        labels = [c.workload or "run" for c in counted]
        colors = [COLORS[0] if c.traffic.value == "real" else COLORS[1] for c in counted]
        ax.bar(labels, [c.counts["page_requests"] for c in counted], width=0.6, color=colors)
        ax.set_ylabel("page requests")
        traffic = sorted({c.traffic.value for c in counted})
        plots.append(Plot(anchor, title, _png(fig),
                          caption=f"traffic: {', '.join(traffic)} (blue real, orange modelled)"))
    else:
        plots.append(Plot(anchor, title, missing="the prq checks carry no "
                          "counts['page_requests']"))
    latency, _ = _series(run, DATA_PRQ_LATENCY_US)
    lat_title = "Page request response latency"
    if latency:
        plots.append(Plot("plot-prq-latency", lat_title, _histogram(latency, "latency (µs)"),
                          caption=f"{len(latency)} responses"))
    else:
        plots.append(Plot("plot-prq-latency", lat_title, missing="no response timestamps: no "
                          f"check recorded data[{DATA_PRQ_LATENCY_US!r}]"))
    return plots


def device(run: RunView) -> Plot:
    """What the svmval-sva device did per SVA workload: page requests, ATS requests, ATC hit rate."""
    anchor, title = "plot-device", "svmval-sva device: page requests and ATC per workload"
    rows = [w for w in run.workloads if w.device_counters]
    if not rows:
        return Plot(anchor, title, missing="no workload reported the svmval-sva device's counters "
                    "(not svmval's QEMU, or no SVA workload ran)")
    fig = _figure(3.2, bars=len(rows))
    ax = fig.add_subplot()
    xs = range(len(rows))
    c = [w.device_counters for w in rows]
    ax.bar([x - 0.2 for x in xs], [d.get("page_requests", 0) for d in c], width=0.4, color=COLORS[0],
           label="page requests")
    ax.bar([x + 0.2 for x in xs], [d.get("ats_requests", 0) for d in c], width=0.4, color=COLORS[1],
           label="ATS requests")
    ax.set_xticks(list(xs), [w.name for w in rows], rotation=30, ha="right", fontsize="small")
    ax.set_yscale("symlog")
    ax.legend(fontsize="small")
    for x, d in zip(xs, c, strict=True):
        looked = d.get("atc_hits", 0) + d.get("atc_misses", 0)
        if looked:
            ax.annotate(f"{100 * d.get('atc_hits', 0) / looked:.0f}% hit", (x, 1), ha="center", fontsize="x-small")
    total = {k: int(sum(d.get(k, 0) for d in c)) for k in ("page_requests", "ats_requests", "atc_hits",
                                                              "atc_misses", "invalidations", "ops")}
    return Plot(anchor, title, _png(fig), caption=", ".join(f"{v} {k.replace('_', ' ')}" for k, v in total.items())
                + " (the device's own counters, real traffic through the vIOMMU)")


def translations(run: RunView) -> Plot:
    anchor, title = "plot-translation", "Translation checks per workload"
    checks = [c for c in run.checks if c.name.startswith("translation")]
    if not checks:
        return Plot(anchor, title, missing="checks.json has no translation check")
    # Counts of individual translations when every check reports them; otherwise one
    # unit per check by verdict. Never mix the two units in one chart.
    by_count = all("passed" in c.counts and "failed" in c.counts for c in checks)
    passed: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for c in checks:
        w = c.workload or "run"
        if by_count:
            passed[w] += c.counts["passed"]
            failed[w] += c.counts["failed"]
        elif c.verdict == Verdict.PASS:
            passed[w] += 1
        elif c.verdict in (Verdict.FAIL, Verdict.ERROR):
            failed[w] += 1
    labels = list(dict.fromkeys(c.workload or "run" for c in checks))
    fig = _figure(2.8, bars=len(labels))
    ax = fig.add_subplot()
    ax.bar(labels, [passed[w] for w in labels], color=COLORS[2], label="passed")
    ax.bar(labels, [failed[w] for w in labels], bottom=[passed[w] for w in labels],
           color=COLORS[3], label="failed")
    ax.set_ylabel("translations" if by_count else "checks")
    ax.legend(fontsize="small")
    return Plot(anchor, title, _png(fig), caption="counts['passed'/'failed'] of each check"
                if by_count else "one unit per check (the checks carry no passed/failed counts)")


def _bandwidth_points(rows: list[WorkloadRow], host: bool = False) -> dict[str, float]:
    return {(w.name if k == w.name else f"{w.name}\n{k}"): v
            for w in rows for k, v in (w.bandwidth_host if host else w.bandwidth).items()}


def _ratio_points(rows: list[WorkloadRow]) -> dict[str, float]:
    return {(w.name if k == w.name else f"{w.name}\n{k}"): v for w in rows for k, v in w.bandwidth_ratio.items()}


def bandwidth(run: RunView) -> Plot:
    """Guest and host bars side by side per workload and flavour, the guest/host ratio above
    each pair. The host side comes from workloads-host.json, else from the bandwidth_host the
    run attached to workloads.json (harness.baseline.attach_ratio)."""
    anchor, title = "plot-bandwidth", "SVM bandwidth, guest vs host"
    guest = _bandwidth_points(run.workloads)
    host = _bandwidth_points(run.workloads_host) or _bandwidth_points(run.workloads, host=True)
    if not guest and not host:
        return Plot(anchor, title, missing="no workload result carries 'bandwidth'")
    labels = list(dict.fromkeys([*guest, *host]))
    ratios = _ratio_points(run.workloads)
    for k in labels:  # a ratio from the two sides when the bundle did not carry one
        if k not in ratios and guest.get(k) and host.get(k):
            ratios[k] = guest[k] / host[k]
    fig = _figure(bars=2 * len(labels))
    ax = fig.add_subplot()
    step = 0.4
    xs = range(len(labels))
    # NaN, not 0, where a side was not measured: matplotlib draws no bar for NaN,
    # while a 0 bar would claim a measurement.
    nan = float("nan")
    ax.bar([x - step / 2 for x in xs], [guest.get(k, nan) for k in labels], step,
           color=COLORS[0], label="guest")
    if host:
        ax.bar([x + step / 2 for x in xs], [host.get(k, nan) for k in labels], step,
               color=COLORS[1], label="host")
        top = max([*guest.values(), *host.values(), 0.0])
        for x, k in zip(xs, labels, strict=True):
            if k in ratios:
                ax.annotate(f"x{ratios[k]:.3g}", (x, max(guest.get(k, 0.0), host.get(k, 0.0))),
                            xytext=(0, 3), textcoords="offset points", ha="center", fontsize="small")
        ax.set_ylim(0, top * 1.15 if top > 0 else 1)
    ax.set_xticks(list(xs), labels, fontsize="small")
    ax.set_ylabel("GB/s")
    ax.legend(fontsize="small")
    notes = []
    if not host:
        notes.append("no host run in this bundle (workloads-host.json, bandwidth_host): guest bars only")
    else:
        notes.append("above each pair: guest / host; under TCG a tiny ratio measures CPU emulation, "
                     "not the vIOMMU")
    gaps = [k.replace("\n", " ") for k in labels if (k in guest) != (k in host) and host]
    if gaps:
        notes.append(f"measured on one side only: {', '.join(gaps)}")
    return Plot(anchor, title, _png(fig), caption="; ".join(notes))


def all_plots(run: RunView, qi: QiTrace | None, qi_absent: str) -> list[Plot]:
    return [qi_mix(qi, qi_absent), inv_to_use(run), *page_requests(run), device(run), translations(run),
            bandwidth(run)]


def trend_plot(dates: list[str], passed: list[int], failed: list[int],
               durations: list[float | None]) -> Plot:
    anchor, title = "plot-trend", "Runs over time"
    if len(dates) < 2:
        return Plot(anchor, title, missing=f"{len(dates)} run(s): a trend needs two")
    fig = _figure()
    ax = fig.add_subplot()
    xs = range(len(dates))
    ax.plot(xs, passed, "o-", color=COLORS[2], label="pass")
    ax.plot(xs, failed, "o-", color=COLORS[3], label="fail + error")
    ax.set_ylabel("outcomes")
    ax.set_xticks(list(xs), dates, rotation=30, ha="right", fontsize="small")
    if any(d is not None for d in durations):
        ax2 = ax.twinx()
        ax2.plot([x for x, d in zip(xs, durations, strict=True) if d is not None],
                 [d for d in durations if d is not None], "s--", color=COLORS[0],
                 label="duration")
        ax2.set_ylabel("run duration (s)")
        ax2.legend(loc="upper right", fontsize="small")
    ax.legend(loc="upper left", fontsize="small")
    return Plot(anchor, title, _png(fig))


def qi_for(trace: Path | None, formats: Path | None = None) -> tuple[QiTrace | None, str]:
    """The trace's QI descriptors, or why there are none to plot."""
    if trace is None:
        return None, "the bundle has no trace.log"
    try:
        return read_qi(trace, formats), ""
    except TraceParseError as exc:
        return None, f"trace.log could not be read: {exc}"
