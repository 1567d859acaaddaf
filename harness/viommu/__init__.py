"""VT-d reference model: one module per spec concern.

``from harness.viommu import VtdModel, GuestMemory, FaultReason``.
"""

from __future__ import annotations

from .builder import FsTables, PageAllocator, SsTables, TableBuilder
from .caches import TranslationCaches
from .capability import Cap, Ecap, VtdConfig, config_from_caps
from .descriptors import PageGroupResponse, PageRequest
from .faults import Fault, FaultReason, RequestType, WalkFault
from .invalidation import InvalidationQueue
from .memory import GuestMemory, MemoryAccessError, Region, q35_regions
from .model import StaleReport, Translation, VtdModel
from .pasid import PasidDirEntry, PasidEntry, Pgtt
from .prq import PageRequestQueue, PageRequestResult, PageRequestStatus, PrgResponseMessage
from .registers import FaultOutcome, Msi, Reg
from .root_context import (
    LegacyContextEntry,
    LegacyRootEntry,
    ScalableContextEntry,
    ScalableRootEntry,
    TranslationTableMode,
    TranslationType,
)

__all__ = [
    "Cap",
    "Ecap",
    "Fault",
    "FaultOutcome",
    "FaultReason",
    "FsTables",
    "GuestMemory",
    "InvalidationQueue",
    "LegacyContextEntry",
    "LegacyRootEntry",
    "MemoryAccessError",
    "Msi",
    "PageAllocator",
    "PageGroupResponse",
    "PageRequest",
    "PageRequestQueue",
    "PageRequestResult",
    "PageRequestStatus",
    "PasidDirEntry",
    "PasidEntry",
    "Pgtt",
    "PrgResponseMessage",
    "Reg",
    "Region",
    "RequestType",
    "ScalableContextEntry",
    "ScalableRootEntry",
    "SsTables",
    "StaleReport",
    "TableBuilder",
    "Translation",
    "TranslationCaches",
    "TranslationTableMode",
    "TranslationType",
    "VtdConfig",
    "VtdModel",
    "WalkFault",
    "config_from_caps",
    "q35_regions",
]
