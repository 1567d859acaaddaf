"""The end-to-end run users get from `pytest --host local`: one run, judged per
workload and per check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.inventory import HostSpec
from harness.paths import REPO_ROOT
from harness.run import RunOutcome, run

# The checks every local-lab run must produce (the prq check once per first-touch workload).
RUN_CHECKS = ("qi-completeness", "faults", "translation", "prq")


def catalog() -> list[str]:
    """Workload names from the same catalog the guest runs."""
    out = subprocess.run(
        [sys.executable, "-m", "workloads", "list", "--names"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    return out.stdout.split()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "workload_name" in metafunc.fixturenames:
        metafunc.parametrize("workload_name", catalog())
    if "check_name" in metafunc.fixturenames:
        metafunc.parametrize("check_name", RUN_CHECKS)


@pytest.fixture(scope="session")
def local_run(host: HostSpec, artifacts_root: Path) -> RunOutcome:
    if not host.is_local:
        pytest.skip(f"the local-lab run needs --host local (got {host.name}); lab hosts run tests/lab")
    return run(host, artifacts_root, say=lambda m: print(f"[svmval] {m}", flush=True))
