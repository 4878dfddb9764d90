"""Engine-side slots: which row of the steering tables holds which steering configuration.

Requests with the same fingerprint share a slot. Slot 0 is reserved for "no steering" (its
rows are the identity edit: zero addition and projections, head scale 1, no router bias; see
tables.py), so padded and unsteered tokens simply index row 0. Slots are a cache over
the configurations of live requests: a batch never holds more distinct configurations than
requests, and the capacity is max_num_seqs, so the configurations of one batch always fit;
configurations not in the current batch are evicted least-recently-used when space runs out.
"""

from __future__ import annotations

from collections import OrderedDict


class SlotAllocator:
    def __init__(self, num_slots: int) -> None:
        self.capacity = num_slots
        self._free = list(range(num_slots, 0, -1))  # slots 1..num_slots, popped from the end
        self._resident: OrderedDict[str, int] = OrderedDict()  # fingerprint -> slot, LRU first

    def assign(self, fingerprints: list[str]) -> tuple[dict[str, int], list[str]]:
        """Give every fingerprint of this step a slot; return (slots, fingerprints newly loaded)."""
        wanted = set(fingerprints)
        slots: dict[str, int] = {}
        loaded: list[str] = []
        for fingerprint in dict.fromkeys(fingerprints):
            if fingerprint in self._resident:
                self._resident.move_to_end(fingerprint)
            else:
                self._resident[fingerprint] = self._take_slot(wanted)
                loaded.append(fingerprint)
            slots[fingerprint] = self._resident[fingerprint]
        return slots, loaded

    def forget(self, fingerprint: str) -> None:
        """Release the slot of a configuration no live request uses any more."""
        slot = self._resident.pop(fingerprint, None)
        if slot is not None:
            self._free.append(slot)

    @property
    def num_resident(self) -> int:
        return len(self._resident)

    def _take_slot(self, wanted: set[str]) -> int:
        if self._free:
            return self._free.pop()
        for fingerprint in self._resident:  # least recently used first
            if fingerprint not in wanted:
                return self._resident.pop(fingerprint)
        raise RuntimeError("more distinct steering configurations in one batch than slots")
