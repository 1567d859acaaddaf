"""The run reads its trace once: every check is fed from one streaming pass, opened
once and caught up at each judgement (held and final), on a real local run."""

from __future__ import annotations

from pathlib import Path
from typing import IO, BinaryIO

import pytest

import harness.trace.parser
from harness.inventory import HostSpec
from harness.qemu.session import LocalSession
from harness.run import run
from reports.bundle import Verdict

pytestmark = pytest.mark.slow


def test_every_check_is_fed_from_one_open_of_the_trace(host: HostSpec, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if not host.is_local:
        pytest.skip("counts opens of the local lab's trace file")
    opened: list[str] = []
    real_open_trace, real_open_text = LocalSession.open_trace, harness.trace.parser._open_text

    def open_trace(self: LocalSession) -> BinaryIO:
        opened.append("run")
        return real_open_trace(self)

    def open_text(path: Path) -> IO[str]:
        opened.append(f"reader:{path.name}")
        return real_open_text(path)

    monkeypatch.setattr(LocalSession, "open_trace", open_trace)
    monkeypatch.setattr(harness.trace.parser, "_open_text", open_text)
    outcome = run(host, tmp_path, workloads=["edu_dma", "edu_dma_fault", "sva_first_touch"])
    assert outcome.bundle.manifest.verdict is Verdict.PASS, outcome.bundle.manifest.error
    judged = {(c.name, c.workload) for c in outcome.checks}
    assert {("translation", "edu_dma"), ("qi-completeness", "edu_dma (held)"), ("qi-completeness", None),
            ("faults", None), ("prq", None)} <= judged
    # One open for all five checks; the only other read is the report's descriptor plot,
    # which re-renders from the bundle alone (svmval report BUNDLE does the same).
    assert opened == ["run", "reader:trace.log"]
