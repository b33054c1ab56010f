"""Training images that are not held decoded: encoded bytes packed in one buffer, or the files themselves.

Both index like the decoded (N, size, size, 3) uint8 array (`images[row]` is one (size, size, 3) RGB image), so the
dataset, the fold loop and exact resume do not know which one they hold. The decode is `raydf.data.images`'s own
(`decode_bytes`, then `resize_square`): an image kept as its file's bytes gives the very pixels the decoded cache
holds. Both are numpy buffers plus offsets, never lists of Python objects: Ray's object store hands them to every
task on a node zero-copy, and a DataLoader worker forked from a fold shares them.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from raydf.data.images import decode_bytes, read_file, resize_square


def pack(items: Iterable[bytes], n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` byte strings as one uint8 buffer and (n + 1,) int64 offsets: item i is `data[offsets[i]:offsets[i + 1]]`."""
    items = list(items)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(b) for b in items], out=offsets[1:])
    data = np.frombuffer(b"".join(items), dtype=np.uint8) if n else np.zeros(0, np.uint8)
    return data, offsets


class EncodedImages:
    """N encoded images (JPEG, PNG, ... bytes) in one buffer; `[row]` decodes one and resizes it to `size` px."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, size: int):
        self.data, self.offsets, self.size = data, offsets, size  # data: (total,) uint8; offsets: (N + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def encoded(self, row: int) -> bytes:
        return self.data[self.offsets[row] : self.offsets[row + 1]].tobytes()

    def __getitem__(self, row: int) -> np.ndarray:
        return resize_square(decode_bytes(self.encoded(row), f"cached row {row}"), self.size)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.offsets.nbytes)


class StreamedImages:
    """The image files themselves (local, shared storage or URIs such as s3://): `[row]` reads, decodes and resizes.

    The paths are packed like encoded images (UTF-8): millions of them cost their characters, not a Python
    string object each, and reach a task zero-copy.
    """

    def __init__(self, paths: Sequence[str], size: int):
        self.names, self.offsets = pack((p.encode() for p in paths), len(paths))
        self.size = size

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def path(self, row: int) -> str:
        return self.names[self.offsets[row] : self.offsets[row + 1]].tobytes().decode()

    def __getitem__(self, row: int) -> np.ndarray:
        path = self.path(row)
        return resize_square(decode_bytes(read_file(path), path), self.size)

    @property
    def nbytes(self) -> int:
        return int(self.names.nbytes + self.offsets.nbytes)
