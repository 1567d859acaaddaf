"""junit.xml: pytest's shape, counts that match the bundle, environment facts."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from report_bundles import QEMU_VERSION, BundleFactory, TraceFacts

from reports.junit import write_junit
from reports.view import load_run


def _parse(make_bundle: BundleFactory, **kw: object) -> ET.Element:
    bundle = make_bundle(**kw)
    return ET.parse(write_junit(load_run(bundle), bundle / "junit.xml")).getroot()


def test_counts_and_shape_match_the_bundle(make_bundle: BundleFactory,
                                           trace_facts: TraceFacts) -> None:
    root = _parse(make_bundle)
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    # 3 workloads + 6 checks.
    assert len(cases) == 9
    assert {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "9", "failures": "3", "errors": "1", "skipped": "2"}
    assert sum(c.find("failure") is not None for c in cases) == 3
    assert sum(c.find("error") is not None for c in cases) == 1
    assert sum(c.find("skipped") is not None for c in cases) == 2
    assert suite.get("time") == "210.000"  # started -> finished

    by_id = {(c.get("classname"), c.get("name")): c for c in cases}
    assert set(by_id) == {
        ("workloads", "saxpy-coarse"), ("workloads", "fine-buffer-atomics"),
        ("workloads", "fine-system"), ("checks.qi-completeness", "run"),
        ("checks.translation", "saxpy-coarse"), ("checks.translation", "fine-buffer-atomics"),
        ("checks.prq", "saxpy-coarse"), ("checks.prq", "fine-system"), ("checks.boot", "run")}
    qi = by_id[("checks.qi-completeness", "run")]
    failure = qi.find("failure")
    assert failure is not None and failure.text is not None
    assert failure.get("message", "").startswith("26 PASID-IOTLB invalidations")
    first = trace_facts.piotlb[0]
    assert f"trace.log lines {first}, {trace_facts.next_translate(first)}" in failure.text
    assert qi.get("time") == "0.420"
    skipped = by_id[("workloads", "fine-system")].find("skipped")
    assert skipped is not None and "FINE_GRAIN_SYSTEM" in skipped.get("message", "")
    # Workload time: the sum of its phases; the phases themselves as properties.
    wl = by_id[("workloads", "saxpy-coarse")]
    assert wl.get("time") == "10.600"
    assert {p.get("name"): p.get("value") for p in wl.iter("property")}["timing.build"] == "10.1"


def test_environment_facts_are_suite_properties(make_bundle: BundleFactory) -> None:
    suite = _parse(make_bundle).find("testsuite")
    assert suite is not None
    props = {p.get("name", ""): p.get("value", "") for p in suite.find("properties") or []}
    assert props["host"] == "local / local / 127.0.0.1"
    assert props["qemu"].startswith(QEMU_VERSION)
    assert props["kernel"] == "6.12.117+deb12-amd64"
    assert props["image.digest"].startswith("sha256:")
    assert props["git.rev"].split()[0] == props["manifest.git.rev"]
    assert props["device"] == "pthread-haswell-QEMU TCG CPU"
    assert props["device.svm"] == "coarse, fine-buffer, atomics"


def test_a_run_that_could_not_complete_is_an_error_testcase(make_bundle: BundleFactory) -> None:
    from reports.bundle import Bundle

    path = make_bundle(checks=[])
    b = Bundle.open(path)
    b.manifest.error = "guest did not boot: no login prompt within 120 s"
    b.save()
    root = ET.parse(write_junit(load_run(path), path / "junit.xml")).getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("errors") == "1"
    err = [c for c in suite.iter("testcase") if c.get("classname") == "svmval"]
    assert len(err) == 1
    error = err[0].find("error")
    assert error is not None and "no login prompt" in (error.get("message") or "")


def test_control_characters_do_not_break_the_xml(make_bundle: BundleFactory) -> None:
    from reports.bundle import CheckResult, Finding, Traffic, Verdict

    check = CheckResult("console", Verdict.FAIL, Traffic.REAL, "escape \x1b[2J and \x07 bell",
                        findings=(Finding("nul \x00 here"),))
    root = _parse(make_bundle, checks=[check])
    case = next(c for c in root.iter("testcase") if c.get("classname") == "checks.console")
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("message") == "escape [2J and  bell"
    assert "nul  here" in (failure.text or "")
