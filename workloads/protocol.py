"""What the workloads and the host that drives them agree on, declared once here
(imports nothing from the harness; the harness imports this module).

Result stream: `python3 -m workloads run --stream` prints one `SVMVAL-RESULT {json}`
line per workload the moment it finishes, so a host reading the output keeps every
finished result even if the guest dies before the run's JSON file is written.

Hold point: a workload that wants the host to inspect its live mappings writes
`HOLD_DIR/NAME.ready` (JSON: {"sid", "pages"}) and waits until `HOLD_DIR/NAME.release`
exists; HOLD_DIR comes from the environment variable below.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

SCHEMA = "svmval.workloads/2"
RESULT_PREFIX = "SVMVAL-RESULT "
HOLD_ENV = "SVMVAL_HOLD_DIR"
HOLD_TIMEOUT_S = 300.0


def result_line(result: dict[str, Any]) -> str:
    return RESULT_PREFIX + json.dumps(result, separators=(",", ":"))


def parse_result_line(line: str) -> dict[str, Any] | None:
    """The result a stream line carries, or None for any other line."""
    if not line.startswith(RESULT_PREFIX):
        return None
    value = json.loads(line[len(RESULT_PREFIX):])
    if not isinstance(value, dict) or "name" not in value or "verdict" not in value:
        raise ValueError(f"a {RESULT_PREFIX.strip()} line without name and verdict: {line[:200]!r}")
    return value


@dataclass(frozen=True)
class HoldPoint:
    """The files of one workload's hold point, in a folder both sides can name."""

    folder: PurePosixPath
    name: str

    @property
    def ready(self) -> PurePosixPath:
        return self.folder / f"{self.name}.ready"

    @property
    def release(self) -> PurePosixPath:
        return self.folder / f"{self.name}.release"

    # -- the workload's side ----------------------------------------------------------
    @classmethod
    def from_env(cls, name: str) -> HoldPoint | None:
        folder = os.environ.get(HOLD_ENV)
        return cls(PurePosixPath(folder), name) if folder else None

    def announce(self, held: dict[str, Any]) -> None:
        """Say what is held (atomically: the host never reads half a file)."""
        tmp = f"{self.ready}.tmp"
        with open(tmp, "w") as fh:
            json.dump(held, fh)
        os.rename(tmp, str(self.ready))

    def wait_for_release(self, timeout: float = HOLD_TIMEOUT_S) -> bool:
        """False when the host never released it within `timeout`."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(str(self.release)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True
