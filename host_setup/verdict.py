"""One line of a preflight verdict table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """A checked fact: `ok` True (good), False (blocks the run) or None (warning/info)."""

    name: str
    ok: bool | None
    value: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.ok is False
