"""Translation caches as VT-d hardware keeps them.

* context cache: per source-id, the context entry (legacy entries tagged by DID);
* PASID cache: per (source-id, PASID), the PASID entry, tagged by DID and PASID;
* IOTLB: translations tagged by DID, PASID, page number and page size, with the
  PGTT of the entry that made them;
* first-stage paging-structure cache: non-leaf FS entries tagged by DID, PASID,
  level and input-address prefix;
* device-TLB (ATS): per (source-id, PASID), the translations a device holds.

With caching mode (CM=1) hardware may also cache not-present / erroneous
entries ("negative" entries); first-stage structures are never cached negatively
(spec §6.1: CM applies to structures other than first-stage). Negative
context/PASID entries carry no valid DID, so domain-scoped invalidations match
them regardless of DID.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .faults import FaultReason

#: Marker in a decision table: the cached entry cannot answer this request class;
#: hardware walks the tables again (e.g. a write to an entry whose D bit is clear).
MISS = "miss"

Decision = FaultReason | None | str


def decision_index(*, write: bool, execute: bool, privileged: bool) -> int:
    return int(write) | int(execute) << 1 | int(privileged) << 2


@dataclass(slots=True)
class ContextCacheEntry:
    sid: int
    did: int | None  # legacy DID; None for scalable-mode entries (they carry no DID)
    entry: Any  # LegacyContextEntry | ScalableContextEntry | None (negative)
    fault: FaultReason | None
    fpd: bool
    scalable: bool
    ss_params: Any = None  # second-stage parameters derived from a legacy entry


@dataclass(slots=True)
class PasidCacheEntry:
    sid: int
    pasid: int
    did: int | None  # None for negative entries
    lookup: Any  # PasidLookup | None (negative)
    fault: FaultReason | None
    fpd: bool
    fs_params: Any = None
    ss_params: Any = None


@dataclass(slots=True)
class IotlbEntry:
    """One cached translation; ``decision[i]`` answers request class i (see decision_index)."""

    did: int
    pasid: int | None
    pgtt: int  # Pgtt value
    page_base: int  # input address of the page
    page_size: int
    out_base: int
    decision: list[Decision]
    fpd: bool
    leaf_pte: int
    level: int
    negative: bool = False
    sids: set[int] = field(default_factory=set)

    @property
    def mask(self) -> int:
        return self.page_size - 1


@dataclass(slots=True)
class PscEntry:
    """A cached non-leaf first-stage entry: where the walk continues below ``level``."""

    did: int
    pasid: int
    level: int  # level of the cached entry (its table is level-1)
    prefix: int  # first input address this entry covers (2^(3+9*level) bytes)
    next_table: int  # address of the next table
    rights: int  # R/W and U/S accumulated through this entry (entry bits 1 and 2)
    xd: int  # XD accumulated (bit 63)
    entry_value: int
    entry_addr: int


@dataclass(slots=True)
class DevtlbEntry:
    sid: int
    pasid: int | None
    page_base: int
    page_size: int
    out_base: int
    r: bool
    w: bool
    x: bool = False
    priv: bool = False


def _overlaps(base: int, size: int, addr: int, span: int) -> bool:
    return base < addr + span and addr < base + size


class TranslationCaches:
    """All caches of one remapping unit, with the invalidation operations of the spec."""

    def __init__(self, iotlb_capacity: int = 0) -> None:
        self.context: dict[int, ContextCacheEntry] = {}
        self.pasid: dict[tuple[int, int], PasidCacheEntry] = {}
        self.iotlb: dict[tuple[int, int, int, int], IotlbEntry] = {}
        self.psc: dict[tuple[int, int, int, int], PscEntry] = {}
        self.devtlb: dict[tuple[int, int, int, int], DevtlbEntry] = {}
        self.iotlb_capacity = iotlb_capacity
        self.generation = 0  # bumped on every removal; memoised lookups depend on it
        self.on_change: Callable[[], None] | None = None

    # ------------------------------------------------------------------ bookkeeping
    def _changed(self) -> None:
        self.generation += 1
        if self.on_change is not None:
            self.on_change()

    @staticmethod
    def _pkey(pasid: int | None) -> int:
        return -1 if pasid is None else pasid

    def clear(self) -> None:
        self.context.clear()
        self.pasid.clear()
        self.iotlb.clear()
        self.psc.clear()
        self.devtlb.clear()
        self._changed()

    # ------------------------------------------------------------------ IOTLB
    def iotlb_lookup(self, did: int, pasid: int | None, addr: int) -> IotlbEntry | None:
        pk = self._pkey(pasid)
        get = self.iotlb.get
        for shift in (12, 21, 30):
            e = get((did, pk, addr >> shift, shift))
            if e is not None:
                return e
        return None

    def iotlb_insert(self, e: IotlbEntry) -> None:
        if self.iotlb_capacity and len(self.iotlb) >= self.iotlb_capacity:
            # Capacity eviction (wholesale, like QEMU's 1024-entry table): hardware may
            # drop any entry at any time, so this never makes an answer stale.
            self.iotlb.clear()
            self._changed()
        shift = e.page_size.bit_length() - 1
        self.iotlb[(e.did, self._pkey(e.pasid), e.page_base >> shift, shift)] = e

    def psc_lookup(self, did: int, pasid: int, addr: int, top: int
                   ) -> PscEntry | None:
        """Deepest cached non-leaf first-stage entry covering ``addr`` (levels 2..top)."""
        get = self.psc.get
        for level in range(2, top + 1):
            e = get((did, pasid, level, addr >> (3 + 9 * level)))
            if e is not None:
                return e
        return None

    def psc_insert(self, e: PscEntry) -> None:
        self.psc[(e.did, e.pasid, e.level, e.prefix >> (3 + 9 * e.level))] = e

    def _drop_iotlb(self, pred: Callable[[IotlbEntry], bool]) -> int:
        keys = [k for k, e in self.iotlb.items() if pred(e)]
        for k in keys:
            del self.iotlb[k]
        return len(keys)

    def _drop_psc(self, pred: Callable[[PscEntry], bool]) -> int:
        keys = [k for k, e in self.psc.items() if pred(e)]
        for k in keys:
            del self.psc[k]
        return len(keys)

    # ------------------------------------------------------------------ invalidations
    def inv_context_global(self) -> None:
        self.context.clear()
        self._changed()

    def inv_context_domain(self, did: int) -> None:
        """Legacy entries of ``did``; scalable-mode and negative entries carry no DID,
        so a domain-selective request removes them too."""
        for k in [k for k, e in self.context.items() if e.did is None or e.did == did
                  or e.entry is None]:
            del self.context[k]
        self._changed()

    def inv_context_device(self, sid: int, fm: int, did: int | None = None) -> None:
        """Entries of source-ids equal to ``sid`` under function mask ``fm``."""
        m = ~{0: 0, 1: 0b100, 2: 0b110, 3: 0b111}[fm & 3] & 0xFFFF
        for k in [k for k in self.context if (k & m) == (sid & m)]:
            del self.context[k]
        self._changed()

    def inv_pasid_global(self) -> None:
        self.pasid.clear()
        self._changed()

    def inv_pasid_domain(self, did: int) -> None:
        for k in [k for k, e in self.pasid.items() if e.did is None or e.did == did]:
            del self.pasid[k]
        self._changed()

    def inv_pasid_selective(self, did: int, pasid: int) -> None:
        for k in [k for k, e in self.pasid.items()
                  if e.pasid == pasid and (e.did is None or e.did == did)]:
            del self.pasid[k]
        self._changed()

    def inv_iotlb_global(self) -> None:
        self.iotlb.clear()
        self.psc.clear()
        self._changed()

    def inv_iotlb_domain(self, did: int) -> None:
        """IOTLB DSI: every entry of ``did`` (any PASID, any PGTT) + its paging-structure cache."""
        self._drop_iotlb(lambda e: e.did == did)
        self._drop_psc(lambda e: e.did == did)
        self._changed()

    def inv_iotlb_page(self, did: int, addr: int, am: int, ih: bool) -> None:
        """IOTLB PSI: second-stage / pass-through mappings of ``did`` overlapping the
        2^AM-page range, and all first-stage and nested mappings of ``did`` (their
        translations are tagged by PASID, which a PSI does not name)."""
        span = 4096 << am
        base = addr & ~(span - 1)

        def hit(e: IotlbEntry) -> bool:
            if e.did != did:
                return False
            if e.pgtt in (1, 3):
                return True
            return _overlaps(e.page_base, e.page_size, base, span)

        self._drop_iotlb(hit)
        self._drop_psc(lambda e: e.did == did)
        self._changed()

    def inv_piotlb_pasid(self, did: int, pasid: int) -> None:
        """PASID-based IOTLB, all entries of ``pasid`` in ``did`` (+ paging-structure cache)."""
        self._drop_iotlb(lambda e: e.did == did and e.pasid == pasid)
        self._drop_psc(lambda e: e.did == did and e.pasid == pasid)
        self._changed()

    def inv_piotlb_page(self, did: int, pasid: int, addr: int, am: int, ih: bool) -> None:
        """PASID-based IOTLB page-selective: first-stage / nested mappings in range; never
        second-stage-only or pass-through ones. IH=1 keeps paging-structure caches."""
        span = 4096 << am
        base = addr & ~(span - 1)
        self._drop_iotlb(
            lambda e: e.did == did and e.pasid == pasid and e.pgtt in (1, 3)
            and _overlaps(e.page_base, e.page_size, base, span)
        )
        if not ih:
            self._drop_psc(
                lambda e: e.did == did and e.pasid == pasid
                and _overlaps(e.prefix, 1 << (3 + 9 * e.level), base, span)
            )
        self._changed()

    def inv_devtlb(self, sid: int, pasid: int | None, base: int, span: int,
                   all_pasids: bool = False) -> None:
        def hit(e: DevtlbEntry) -> bool:
            if e.sid != sid:
                return False
            if not all_pasids and e.pasid != pasid:
                return False
            return _overlaps(e.page_base, e.page_size, base, span)

        for k in [k for k, e in self.devtlb.items() if hit(e)]:
            del self.devtlb[k]
        self._changed()

    # ------------------------------------------------------------------ device-TLB
    def devtlb_lookup(self, sid: int, pasid: int | None, addr: int) -> DevtlbEntry | None:
        pk = self._pkey(pasid)
        for shift in (12, 21, 30):
            e = self.devtlb.get((sid, pk, addr >> shift, shift))
            if e is not None:
                return e
        return None

    def devtlb_insert(self, e: DevtlbEntry) -> None:
        shift = e.page_size.bit_length() - 1
        self.devtlb[(e.sid, self._pkey(e.pasid), e.page_base >> shift, shift)] = e

    # ------------------------------------------------------------------ summary
    def state(self) -> dict[str, Any]:
        return {
            "context": sorted(self.context),
            "pasid": sorted(self.pasid),
            "iotlb": [
                {
                    "did": e.did,
                    "pasid": e.pasid,
                    "pgtt": e.pgtt,
                    "iova": e.page_base,
                    "size": e.page_size,
                    "out": e.out_base,
                    "negative": e.negative,
                }
                for e in sorted(self.iotlb.values(), key=lambda e: (e.did, e.page_base))
            ],
            "psc": len(self.psc),
            "devtlb": [
                {"sid": e.sid, "pasid": e.pasid, "iova": e.page_base, "size": e.page_size}
                for e in self.devtlb.values()
            ],
        }

    def counts(self) -> dict[str, int]:
        return {
            "context": len(self.context),
            "pasid": len(self.pasid),
            "iotlb": len(self.iotlb),
            "psc": len(self.psc),
            "devtlb": len(self.devtlb),
        }
