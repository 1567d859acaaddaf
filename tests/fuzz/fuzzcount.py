"""Examples run per fuzz test: `@counted` under `@given` counts each call of the body."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

RUN: Counter[str] = Counter()


def counted(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def body(*args: Any, **kwargs: Any) -> Any:
        RUN[fn.__name__] += 1
        return fn(*args, **kwargs)
    return body


def fuzz_settings() -> Any:
    """The profile tests/fuzz/conftest.py registers (SVMVAL_FUZZ_EXAMPLES per test)."""
    from hypothesis import settings

    return settings(settings.get_profile("svmval-fuzz"))
