"""Hypothesis profiles for the fuzz tests: the example count comes from one variable.

``SVMVAL_FUZZ_EXAMPLES`` (default 50, what `make check` runs) is the examples per test;
`make fuzz` sets it high, turns derandomize off and keeps no example database, so a run
explores new inputs each time and leaves no files behind. At the end the session prints
the examples run in total (fuzzcount.counted counts them).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("SVMVAL_FUZZ_EXAMPLES", "50"))
settings.register_profile(
    "svmval-fuzz", max_examples=EXAMPLES, deadline=None, database=None,
    # Small runs (make check) repeat: the same inputs each time; make fuzz explores.
    derandomize=EXAMPLES <= 50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture])
# Not loaded globally: only the fuzz tests use it (fuzzcount.FUZZ), other property tests keep theirs.


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from fuzzcount import RUN  # tests/fuzz is on sys.path (rootdir-relative import)

    if RUN:
        terminalreporter.write_line(
            f"svmval fuzz: {sum(RUN.values())} examples in {len(RUN)} tests "
            f"(SVMVAL_FUZZ_EXAMPLES={EXAMPLES} per test)")
