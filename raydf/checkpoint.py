"""Fold checkpoints: best weights plus metadata, written atomically, loadable with weights_only=True."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call `write(file_object)` on a temp file in the same folder, fsync, then rename over `path`.

    A reader (or a crash) never sees a half-written file: rename is atomic on one file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_fold_checkpoint(path: str | os.PathLike, weights: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Save `{"state_dict": tensors, "meta": plain data}` (numpy weights from the object store become tensors)."""
    state = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}  # np.array: copy of read-only views
    atomic_write(path, lambda f: torch.save({"state_dict": state, "meta": meta}, f))


def load_fold_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and metadata of a fold checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["state_dict"], ckpt["meta"]
