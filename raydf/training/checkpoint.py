"""Fold checkpoints: best weights plus metadata, written atomically, loadable with weights_only=True."""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import torch

from raydf.runs.model_key import ModelKey, model_name
from raydf.runs.storage import RunStorage

log = logging.getLogger(__name__)


def checkpoint_name(fold: int | ModelKey) -> str:
    """`checkpoints/fold{k}.pt`, or `checkpoints/s{seed}_fold{k}.pt` for a model of a run of several seeds."""
    return f"checkpoints/{model_name(fold)}.pt"


def save_fold_checkpoint(
    storage: RunStorage, fold: int | ModelKey, weights: dict[str, np.ndarray], meta: dict[str, Any]
) -> None:
    """Save `{"state_dict": tensors, "meta": plain data}` (numpy weights from the object store become tensors)."""
    state = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}  # np.array: copy of read-only views
    storage.save_torch(checkpoint_name(fold), {"state_dict": state, "meta": meta})


def load_fold_checkpoint(storage: RunStorage, fold: int | ModelKey) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and metadata of a fold checkpoint."""
    ckpt = storage.load_torch(checkpoint_name(fold))
    return ckpt["state_dict"], ckpt["meta"]


def try_load_fold_checkpoint(
    storage: RunStorage, fold: int | ModelKey
) -> Optional[tuple[dict[str, torch.Tensor], dict]]:
    """A finished fold's checkpoint, or None when it is missing or unreadable (then the fold is trained again)."""
    if not storage.exists(checkpoint_name(fold)):
        return None
    try:
        return load_fold_checkpoint(storage, fold)
    except Exception as e:  # a truncated or foreign file: report it and retrain rather than crash the run
        log.warning(
            "%s: checkpoint %s is unreadable (%s: %s); the fold will be trained again from its last saved epoch",
            fold.label if isinstance(fold, ModelKey) else f"fold {fold}",
            storage.path(checkpoint_name(fold)),
            type(e).__name__,
            e,
        )
        return None
