"""Error types: every message names the bad input and how to fix it.

Environment problems (the lab cannot run) and test failures (the lab ran and
something was wrong) are different things; keep them apart in types so reports
can tell them apart too.
"""

from __future__ import annotations


class SvmvalError(Exception):
    """Base class for errors svmval reports to a user."""


class ConfigError(SvmvalError):
    """Bad input: inventory, command-line option, file contents."""


class EnvironmentBroken(SvmvalError):
    """The lab (local or remote) cannot run: missing tool, dead host, no device."""


class GuestError(EnvironmentBroken):
    """The guest did not boot or stopped answering; carries the console tail."""
