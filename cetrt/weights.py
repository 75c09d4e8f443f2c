"""Weight files: one block's weights as raw arrays, for engines whose weights are inputs (the one writer and reader).

A `.weights` file is every weight tensor of one block, back to back, each starting at a 4 KiB offset so a
direct (O_DIRECT) read lands them aligned and the arrays are views of the read buffer, not copies. The index
(name, offset, dtype, shape per tensor) lives in manifest.json beside the file's size and sha256.
Usage: `index = write_weight_file(path, arrays)`; `arrays = weights_from_bytes(data, index)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

_ALIGN = 4096


@dataclass(frozen=True)
class WeightEntry:
    name: str  # the engine input it feeds
    offset: int
    dtype: str  # NumPy dtype name: "float16", "float32"
    shape: tuple[int, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "offset": self.offset, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict) -> "WeightEntry":
        return cls(data["name"], int(data["offset"]), data["dtype"], tuple(int(d) for d in data["shape"]))


def write_weight_file(path: Path, arrays: dict[str, np.ndarray]) -> tuple[WeightEntry, ...]:
    """Write `arrays` in order, each at an aligned offset; returns the index to record."""
    index, offset = [], 0
    with open(path, "wb") as f:
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            f.seek(offset)
            f.write(array.tobytes())
            index.append(WeightEntry(name, offset, array.dtype.name, tuple(array.shape)))
            offset += -(-array.nbytes // _ALIGN) * _ALIGN
    return tuple(index)


def weights_from_bytes(data: bytes, index: tuple[WeightEntry, ...]) -> dict[str, np.ndarray]:
    """Read-only views of `data`, one per entry (no copy)."""
    return {
        e.name: np.frombuffer(data, dtype=np.dtype(e.dtype), count=int(np.prod(e.shape, dtype=np.int64)),
                              offset=e.offset).reshape(e.shape)
        for e in index
    }
