"""Batch shapes: the one place that decides how packed rows are padded and how big a batch may be.

The runner pads rows to a multiple of `length_multiple` and fills a batch up to `tokens_per_batch` padded tokens.
The multiple is 8, the smallest ONNX Runtime's fused FP16 attention takes with a bias (its memory-efficient kernel
needs L % 8; a smaller one falls back to the unfused kernels): on all HellaSwag items it pads 2.1% of the tokens
where 32 padded 9.5% (bench/padding.py), compute that every layer paid for. The build turns the same plan into
optimization profiles (min / opt / max of B, L and S), one per length range, so every batch the runner makes falls
inside a profile. With profiles (a `max_length`), a batch holds at most `tokens_per_batch // high` rows, `high` the
top of its length range: a profile's largest corner (max B x max L) is then no larger than the largest batch,
instead of pairing the short end's B with the long end's L (4x the tokens for the range 1..128). Short rows of a
range fill their batches less: more `length_splits` trade build time (one set of kernels per profile) for fuller
batches. The manifest records the plan, and the runner uses the recorded one for engines that need it.
Usage: `plan = ShapePlan(); plan.profiles()`; `plan.profile_for(batch=12, length=192, slots=180)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cetrt.errors import UserError

NUM_ENDINGS = 4


@dataclass(frozen=True)
class Profile:
    """Inclusive ranges of the dynamic dims; `opt` is the shape the builder tunes for."""

    min: dict[str, int]
    opt: dict[str, int]
    max: dict[str, int]

    def covers(self, dims: dict[str, int]) -> bool:
        return all(self.min[d] <= v <= self.max[d] for d, v in dims.items())

    def describe(self) -> str:
        return ", ".join(f"{d} [{self.min[d]}, {self.opt[d]}, {self.max[d]}]" for d in self.min)

    def to_json(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class ShapePlan:
    tokens_per_batch: int = 4096
    length_multiple: int = 8
    max_length: int | None = None  # longest padded row engines with fixed profiles accept; None: any
    length_splits: tuple[int, ...] = (128, 256)  # profile boundaries on L

    def __post_init__(self):
        if self.tokens_per_batch < 1 or self.length_multiple < 1:
            raise UserError(f"tokens per batch ({self.tokens_per_batch}) and length multiple ({self.length_multiple}) must be positive")
        if self.max_length is not None and self.max_length % self.length_multiple:
            raise UserError(f"max length {self.max_length} must be a multiple of the length multiple "
                            f"{self.length_multiple}: pad to a multiple that divides it (ce-run --length-multiple) or build with a MAX_LENGTH "
                            f"that {self.length_multiple} divides")

    def padded_length(self, length: int) -> int:
        return -(-length // self.length_multiple) * self.length_multiple

    def length_range(self, padded_length: int) -> tuple[int, int]:
        """The (low, high) inclusive L range of the profile a padded length falls in (profiles need max_length)."""
        low = 1
        for high in self._edges():
            if padded_length <= high:
                return low, high
            low = high + 1
        return low, padded_length  # beyond max_length: make_batches refuses such rows before asking

    def batch_size(self, padded_length: int) -> int:
        """Rows per batch; with profiles, capped by the top of the length range so its profile stays a batch."""
        longest = padded_length if self.max_length is None else self.length_range(padded_length)[1]
        return max(1, self.tokens_per_batch // longest)

    def max_slots(self, padded_length: int) -> int:
        """Scored tokens of a row: every fed ending token, plus each ending's first from the context's end."""
        return padded_length + NUM_ENDINGS

    def profiles(self) -> list[Profile]:
        if self.max_length is None:
            raise UserError("optimization profiles need a maximum row length (--max-length)")
        profiles, low = [], 1
        for high in self._edges():
            rows = self.batch_size(high)  # every padded length of the range gets this many rows at most
            profiles.append(Profile(
                min={"B": 1, "L": low, "S": 1},
                opt={"B": rows, "L": high, "S": self.max_slots(high) - NUM_ENDINGS},
                max={"B": rows, "L": high, "S": self.max_slots(high)},
            ))
            low = high + 1
        return profiles

    def _edges(self) -> list[int]:
        return [e for e in self.length_splits if e < self.max_length] + [self.max_length]

    def profile_for(self, batch: int, length: int, slots: int) -> int:
        dims = {"B": batch, "L": length, "S": slots}
        for index, profile in enumerate(self.profiles()):
            if profile.covers(dims):
                return index
        ranges = "; ".join(p.describe() for p in self.profiles())
        raise UserError(f"batch shape B={batch} L={length} S={slots} is outside every optimization profile ({ranges}); "
                        f"rebuild the engines with a larger MAX_LENGTH or run with the plan they were built for")

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["length_splits"] = list(self.length_splits)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "ShapePlan":
        return cls(**{**data, "length_splits": tuple(data.get("length_splits", ()))})
