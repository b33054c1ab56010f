"""The run directory as storage: a local path, a shared file system, or a URI (s3://, gs://, file://).

Fold tasks write their per-epoch state here, so a fold retried on another node finds it: on a cluster the
run directory must be shared storage. Every write is atomic: a reader never sees half a file.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import Optional

import pyarrow.fs as pafs

from raydf import signals


def is_uri(location: str) -> bool:
    return "://" in str(location)


class RunStorage:
    """Files under one root, addressed by relative POSIX paths such as `checkpoints/fold0.pt`."""

    def __init__(self, root: str | os.PathLike):
        self.root = str(root)
        if is_uri(self.root):
            self.fs, base = pafs.FileSystem.from_uri(self.root)
        else:
            self.fs, base = pafs.LocalFileSystem(), str(Path(self.root).resolve())
        self.base = base.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    @classmethod
    def for_file(cls, location: str | os.PathLike) -> tuple[RunStorage, str]:
        """The storage of a file's folder and the file's name: `s3://b/x/p.csv` -> (s3://b/x, "p.csv")."""
        parent, _, name = str(location).rstrip("/").rpartition("/")
        return cls(parent if parent and not parent.endswith(":/") else "."), name

    def __reduce__(self):  # pickled into Ray tasks by its root alone (file system handles are rebuilt)
        return RunStorage, (self.root,)

    def path(self, rel: str) -> str:
        """Path of `rel` inside the file system (for a local root, an ordinary absolute path)."""
        return f"{self.base}/{rel}" if rel else self.base

    def local_path(self, rel: str = "") -> Optional[Path]:
        """A local `Path` when the storage is on this machine's file system, else None."""
        return Path(self.path(rel)) if self.local else None

    def makedirs(self, rel: str = "") -> None:
        self.fs.create_dir(self.path(rel), recursive=True)

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def listdir(self, rel: str = "") -> list[str]:
        """Names directly under `rel` (empty when it does not exist)."""
        if not self.exists(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=False))
        return sorted(Path(i.path).name for i in infos)

    def read_bytes(self, rel: str) -> bytes:
        # A random-access file reads the whole object in one request. pyarrow's input *stream* reads an S3 object
        # in 256 KB ranged GETs: about 1,500 requests for one fold state, minutes against a slow endpoint.
        with self.fs.open_input_file(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write atomically: a temp file in the same folder, flushed to disk, then renamed over `rel`.

        On object stores (S3, GCS) there is no atomic rename (a move is a copy, then a delete), but an upload
        is atomic: the object appears, or replaces the old one, whole when the upload completes. So the final
        key is written directly, and a killed writer leaves no temp object behind.
        """
        target = self.path(rel)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        if not self.local:
            with self.fs.open_output_stream(target) as f:
                f.write(data)
            return
        tmp = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with signals.partial_file(tmp), open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def move(self, src: str, dst: str) -> None:
        """A rename locally; on an object store a server-side copy of the whole object, then a delete."""
        self.fs.move(self.path(src), self.path(dst))

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))

    def save_torch(self, rel: str, obj) -> None:
        import torch

        buf = io.BytesIO()
        torch.save(obj, buf)
        self.write_bytes(rel, buf.getvalue())

    def load_torch(self, rel: str):
        """`torch.load(weights_only=True)`: tensors and plain data only, never arbitrary pickles."""
        import torch

        return torch.load(io.BytesIO(self.read_bytes(rel)), map_location="cpu", weights_only=True)
