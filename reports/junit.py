"""JUnit XML for CI systems, in the shape pytest's --junitxml writes:
testsuites > testsuite (properties, testcase*) > failure | error | skipped.

One testcase per workload (classname "workloads") and per check (classname
"checks.<name>", name = its workload or "run"); a run that could not complete adds
an "svmval::run" error so CI never shows a broken run as green.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from reports.bundle import Finding, Verdict, mask_secrets
from reports.view import Outcome, RunView

# XML 1.0 cannot carry most control characters even escaped; a console line with
# an ESC in it would make the whole file unparseable.
_NOT_XML = re.compile(r"[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(s: str) -> str:
    return _NOT_XML.sub("", mask_secrets(s))


def finding_text(f: Finding) -> str:
    """A finding with its evidence, for people reading the CI log."""
    parts = [f.message]
    if f.trace_lines:
        parts.append("  trace.log lines " + ", ".join(map(str, f.trace_lines)))
    if f.console_lines:
        parts.append("  console.log lines " + ", ".join(map(str, f.console_lines)))
    return "\n".join(parts)


def _properties(parent: ET.Element, props: dict[str, str]) -> None:
    if not props:
        return
    el = ET.SubElement(parent, "properties")
    for k, v in props.items():
        ET.SubElement(el, "property", name=_text(k), value=_text(v))


def _flatten(prefix: str, value: object, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, list | tuple):
        out[prefix] = ", ".join(map(str, value))
    elif value not in (None, ""):
        out[prefix] = str(value)


def environment_properties(run: RunView) -> dict[str, str]:
    """The canonical facts first (stable names CI dashboards can key on), then every
    scalar of the manifest's host/qemu/guest/device/git sections."""
    props = dict(run.environment())
    m = run.manifest
    props |= {"run_id": m.run_id, "verdict": m.verdict.value, "started": m.started}
    for section in ("host", "qemu", "guest", "device", "git", "durations"):
        _flatten(f"manifest.{section}", getattr(m, section), props)
    return props


def _testcase(suite: ET.Element, o: Outcome) -> None:
    case = ET.SubElement(suite, "testcase", classname=_text(o.classname), name=_text(o.name),
                         time=f"{o.time_s:.3f}")
    _properties(case, o.properties)
    body = "\n".join([o.message, *(finding_text(f) for f in o.findings)]).strip()
    if o.verdict == Verdict.FAIL:
        ET.SubElement(case, "failure", message=_text(o.message)).text = _text(body)
    elif o.verdict == Verdict.ERROR:
        ET.SubElement(case, "error", message=_text(o.message)).text = _text(body)
    elif o.verdict == Verdict.SKIP:
        ET.SubElement(case, "skipped", type="svmval.skip", message=_text(o.message))


def build_junit(run: RunView) -> ET.ElementTree:
    outcomes = run.outcomes()
    tally = {v: sum(o.verdict == v for o in outcomes) for v in Verdict}
    attrs: dict[str, str] = {
        "tests": str(len(outcomes)),
        "failures": str(tally[Verdict.FAIL]),
        "errors": str(tally[Verdict.ERROR]),
        "skipped": str(tally[Verdict.SKIP]),
        "time": f"{run.duration_s() or sum(o.time_s for o in outcomes):.3f}",
    }
    root = ET.Element("testsuites", {"name": "svmval", **attrs})
    suite = ET.SubElement(root, "testsuite", {
        "name": _text(f"svmval.{run.run_id}"), **attrs,
        "timestamp": _text(run.manifest.started),
        "hostname": _text(str(run.manifest.host.get("name") or "unknown")),
    })
    _properties(suite, environment_properties(run))
    for o in outcomes:
        _testcase(suite, o)
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(run: RunView, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    build_junit(run).write(out, encoding="utf-8", xml_declaration=True)
    return out
