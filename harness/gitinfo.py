"""The svmval revision a run used, for the manifest."""

from __future__ import annotations

import subprocess

from harness.paths import REPO_ROOT


def git_revision() -> dict[str, object]:
    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 else ""

    rev = git("rev-parse", "HEAD")
    if not rev:
        return {"rev": "unknown", "dirty": None}
    return {"rev": rev, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
