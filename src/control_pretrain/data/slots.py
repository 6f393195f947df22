"""The concatenated multi-domain slot layout (smart.md §2.8), the one implementation used by the data, the
rollouts and weight loading: each domain's observation (or action) vector sits in its own slice of one wider
vector, zero elsewhere. Pretraining checkpoints store their layouts (``SlotLayout.to_dict``) so finetuning on a
seen domain can put its observations where pretraining had them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DatasetError


@dataclass(frozen=True)
class SlotLayout:
    """Where each domain's vector sits inside the concatenated vector: ``slots[domain] = (offset, size)``."""

    slots: dict[str, tuple[int, int]]

    @classmethod
    def from_sizes(cls, sizes: Sequence[tuple[str, int]]) -> SlotLayout:
        slots, offset = {}, 0
        for domain, size in sizes:
            if domain in slots:
                if slots[domain][1] != size:
                    raise DatasetError(f"domain '{domain}' appears with vector sizes {slots[domain][1]} and {size}")
                continue
            slots[domain] = (offset, size)
            offset += size
        return cls(slots)

    @classmethod
    def single(cls, domain: str, size: int) -> SlotLayout:
        """One domain that fills the whole vector (a single-task run)."""
        return cls({domain: (0, size)})

    @classmethod
    def from_dict(cls, layout: dict[str, Sequence[int]]) -> SlotLayout:
        """Inverse of ``to_dict`` (checkpoints store layouts as ``{domain: [offset, size]}``)."""
        return cls({d: (int(o), int(s)) for d, (o, s) in layout.items()})

    @property
    def size(self) -> int:
        return sum(size for _, size in self.slots.values())

    def to_dict(self) -> dict[str, list[int]]:
        return {d: [o, s] for d, (o, s) in self.slots.items()}

    def place(self, domain: str, x):
        """(..., size of ``domain``) -> (..., ``self.size``), zero outside the domain's slot. NumPy arrays come
        back float32 (the dataset's dtype); tensors keep their dtype and device (training batches, rollouts)."""
        offset, size = self.slots[domain]
        shape = (*x.shape[:-1], self.size)
        out = x.new_zeros(shape) if hasattr(x, "new_zeros") else np.zeros(shape, np.float32)
        out[..., offset : offset + size] = x
        return out

    def fits(self, domain: str, size: int) -> bool:
        """Whether ``domain`` has a slot of exactly ``size`` values."""
        return domain in self.slots and self.slots[domain][1] == size

    def number(self, domain: str) -> int:
        """The slot's position in layout order: the ``domain_id`` of the domain's samples (data/windows.py)."""
        return list(self.slots).index(domain)

    def take(self, domain: str, y):
        """The domain's slice of (..., ``self.size``) arrays or tensors."""
        offset, size = self.slots[domain]
        return y[..., offset : offset + size]
