"""Where svmval keeps caches and run artefacts."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Content-addressed cache for images and compiled kernels, outside the repo."""
    base = os.environ.get("SVMVAL_CACHE")
    path = Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "svmval"
    path.mkdir(parents=True, exist_ok=True)
    return path
