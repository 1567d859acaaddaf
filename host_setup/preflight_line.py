"""One line of a preflight verdict table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PreflightLine:
    """One line of a preflight table, a checked fact: `ok` True (good), False (blocks
    the run) or None (a note)."""

    name: str
    ok: bool | None
    value: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.ok is False
