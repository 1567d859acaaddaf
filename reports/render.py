"""The entry point a run calls at its end: render report.html and junit.xml into
the bundle and name them in its manifest."""

from __future__ import annotations

from pathlib import Path

from reports.bundle import Bundle
from reports.html import write_html
from reports.junit import write_junit
from reports.view import load_run


def render_bundle(
    bundle_dir: Path, *, html_out: Path | None = None, junit_out: Path | None = None
) -> tuple[Path, Path]:
    """Write the HTML report and JUnit XML (default: report.html and junit.xml in the
    bundle) and return their paths. Outputs inside the bundle are recorded in
    manifest.files under the roles "report" and "junit"."""
    run = load_run(bundle_dir)
    html_path = write_html(run, html_out or bundle_dir / "report.html")
    junit_path = write_junit(run, junit_out or bundle_dir / "junit.xml")
    # Written directly rather than through Bundle.add_text: the page is masked field
    # by field while rendering, and masking the finished page could corrupt base64.
    # Only touch manifest.json when something changed: an archived bundle rendered
    # to --out elsewhere may be read-only.
    bundle = Bundle(bundle_dir, run.manifest)
    changed = False
    inside = bundle_dir.resolve()
    for role, path in (("report", html_path), ("junit", junit_path)):
        if path.resolve().parent == inside and bundle.manifest.files.get(role) != path.name:
            bundle.manifest.files[role] = path.name
            changed = True
    if changed:
        bundle.save()
    return html_path, junit_path
