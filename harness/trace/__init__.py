"""QEMU ``vtd_*`` trace parsing into typed events.

``iter_events(path_or_lines, names=None, strict=False)`` yields events in file
order; ``parse_trace_file(path)`` returns them as a list; ``summarize(events)``
counts them per event name and per descriptor type. Formats come from the
installed QEMU's trace-events-all (``load_event_table``).
"""

from __future__ import annotations

from .events import (
    TYPED_BY_NAME,
    BadLine,
    DmarFault,
    DmarTranslate,
    FrrNew,
    GenericEvent,
    InvDesc,
    InvDescWaitSw,
    InvQiHead,
    InvQiTail,
    IotlbPageHit,
    IotlbPageUpdate,
    RegDmarRoot,
    RegRead,
    RegWrite,
    SwitchAddressSpace,
    TraceEvent,
)
from .formats import EventFormat, EventTable, load_event_table
from .parser import (
    TraceParseError,
    TraceSummary,
    count_events,
    descriptor_type_counts,
    iter_events,
    parse_trace_file,
    summarize,
    untyped_events,
)

__all__ = [
    "TYPED_BY_NAME",
    "BadLine",
    "DmarFault",
    "DmarTranslate",
    "EventFormat",
    "EventTable",
    "FrrNew",
    "GenericEvent",
    "InvDesc",
    "InvDescWaitSw",
    "InvQiHead",
    "InvQiTail",
    "IotlbPageHit",
    "IotlbPageUpdate",
    "RegDmarRoot",
    "RegRead",
    "RegWrite",
    "SwitchAddressSpace",
    "TraceEvent",
    "TraceParseError",
    "TraceSummary",
    "count_events",
    "descriptor_type_counts",
    "iter_events",
    "load_event_table",
    "parse_trace_file",
    "summarize",
    "untyped_events",
]
