"""TensorBoard event files per model (`RUN_DIR/tensorboard/fold{k}`, or `s{seed}_fold{k}` in a run of several
seeds), written on the driver from progress events.

The driver writes them, not the fold tasks: on a cluster a worker may not see the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raydf.runs.model_key import ModelKey

# Scalar tag -> key of an epoch event. Tags group into TensorBoard sections (loss, accuracy, lr).
SCALARS = {
    "loss/train": "train_loss",
    "loss/val": "val_loss",
    "accuracy/train": "train_acc",
    "accuracy/val": "val_acc",
    "lr": "lr",
}


class TensorBoardLog:
    """Consumes progress events; one `SummaryWriter` per model, step = epoch. Use as a context manager."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._writers: dict[str, Any] = {}

    def _writer(self, fold: str, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only once there is a run

        if fold in self._writers and purge_step is not None:
            self._writers.pop(fold).close()
        if fold not in self._writers:
            self._writers[fold] = SummaryWriter(str(self.root / fold), purge_step=purge_step)
        return self._writers[fold]

    def __call__(self, events: list[dict]) -> None:
        for event in events:
            fold = ModelKey.of(event).name  # the seed only matters when the event names one
            if event["type"] == "start" and fold in self._writers:
                # A retried fold starts over: TensorBoard drops the earlier attempt's points from epoch 1 on.
                self._writer(fold, purge_step=1)
            elif event["type"] == "epoch":
                writer = self._writer(fold)
                for tag, key in SCALARS.items():
                    writer.add_scalar(tag, event[key], global_step=event["epoch"], walltime=event.get("time"))
                writer.flush()  # a TensorBoard open on the run shows each epoch as it arrives

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
