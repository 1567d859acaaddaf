"""The rendered page in a real browser: headless Chromium loads it from file://,
with every network feature off, and must log no console errors or failed loads."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest
from report_bundles import BundleFactory, chromium

from reports.render import render_bundle

CHROMIUM = chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (scripts/bootstrap.sh installs it)")

# Chromium's own noise (no D-Bus in a container, no GPU) is logged too; what comes
# from the page is a console message (`INFO:CONSOLE:1] "boom", source: file://...`;
# older builds write CONSOLE(1)) or a failed load. The page has no script, so any
# console message at all is a fault.
PAGE_ERROR = re.compile(r":CONSOLE[:(]|Failed to load resource|net::ERR_|Not allowed to load")


def screenshot(page: Path, out: Path, profile: Path) -> str:
    assert CHROMIUM is not None
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={out}",
         "--window-size=1280,2000", "--enable-logging=stderr", "--v=0", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def test_the_detector_sees_page_errors(tmp_path: Path) -> None:
    """Without this, a silent detector would pass any page."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><img src="missing.png"><script>console.error("boom")</script>')
    log = screenshot(bad, tmp_path / "bad.png", tmp_path / "profile")
    assert PAGE_ERROR.search(log), log[-2000:]


def test_report_renders_in_chromium_without_errors(make_bundle: BundleFactory,
                                                    tmp_path: Path) -> None:
    html, _ = render_bundle(make_bundle())
    shot = tmp_path / "report.png"
    log = screenshot(html, shot, tmp_path / "profile")
    errors = [ln for ln in log.splitlines() if PAGE_ERROR.search(ln)]
    assert errors == []
    assert png_size(shot) == (1280, 2000)
    # A blank or broken page compresses to a few KB; this one has tables and plots.
    assert shot.stat().st_size > 100_000
