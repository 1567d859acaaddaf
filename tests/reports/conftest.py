"""Fixtures for the report tests; the builders live in report_bundles.py (a unique
module name: test modules import its constants, and `conftest` is ambiguous when
several test folders have one)."""

from report_bundles import console_facts, make_bundle, trace_facts, trace_text

__all__ = ["console_facts", "make_bundle", "trace_facts", "trace_text"]
