"""Engine-side slots: which rows of the steering tables and of the vector pool hold which configuration.

Requests with the same fingerprint share a slot. Slot 0 is reserved for "no steering" (its
rows are the identity edit: zero addition and projections, head scale 1, no router bias; see
tables.py), so padded and unsteered tokens simply index row 0; pool row 0 is the zero vector.
Slots and pool rows are a cache over the configurations of live requests: the scheduler admits a
request only when the configurations of the running batch fit both (engine/admission.py), so the
configurations of one batch always fit; configurations not in the current batch are evicted
least-recently-used when either runs out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


class SlotAllocator:
    def __init__(self, num_slots: int, pool_rows: int) -> None:
        self.capacity = num_slots
        self.vector_capacity = pool_rows - 1  # pool row 0 is the shared zero vector
        self._free = list(range(num_slots, 0, -1))  # slots 1..num_slots, popped from the end
        self._free_rows = list(range(pool_rows - 1, 0, -1))  # pool rows 1..P-1, popped from the end
        self._resident: OrderedDict[str, tuple[int, list[int]]] = OrderedDict()  # fingerprint -> (slot, pool rows)

    def assign(self, fingerprints: list[str], vectors_needed: Callable[[str], int]) -> tuple[dict[str, int], list[str]]:
        """Give every fingerprint of this step a slot and its pool rows; return (slots, fingerprints
        newly loaded). `vectors_needed(fingerprint)` is asked for new fingerprints only."""
        wanted = set(fingerprints)
        slots: dict[str, int] = {}
        loaded: list[str] = []
        for fingerprint in dict.fromkeys(fingerprints):
            if fingerprint in self._resident:
                self._resident.move_to_end(fingerprint)
            else:
                need = vectors_needed(fingerprint)
                self._make_room(wanted, need)
                rows = [self._free_rows.pop() for _ in range(need)]
                self._resident[fingerprint] = (self._free.pop(), rows)
                loaded.append(fingerprint)
            slots[fingerprint] = self._resident[fingerprint][0]
        return slots, loaded

    def pool_rows(self, fingerprint: str) -> list[int]:
        return self._resident[fingerprint][1]

    def forget(self, fingerprint: str) -> None:
        """Release the slot and pool rows of a configuration no live request uses any more."""
        entry = self._resident.pop(fingerprint, None)
        if entry is not None:
            self._free.append(entry[0])
            self._free_rows.extend(reversed(entry[1]))

    @property
    def num_resident(self) -> int:
        return len(self._resident)

    @property
    def vectors_in_use(self) -> int:
        return self.vector_capacity - len(self._free_rows)

    def _make_room(self, wanted: set[str], need: int) -> None:
        while not self._free or len(self._free_rows) < need:
            victim = next((fp for fp in self._resident if fp not in wanted), None)  # least recently used first
            if victim is None:
                raise RuntimeError("steering configurations of one batch exceed the slots or the vector pool "
                                   "(the scheduler's steering admission should have held them back)")
            self.forget(victim)
