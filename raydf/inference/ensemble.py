"""The K fold models of a run as one predictor: P(fake) per fold and their mean (the soft vote)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from raydf.config import DEFAULT_MODEL, Config
from raydf.data.images import center_crop
from raydf.inference.calibration import NONE, Calibration
from raydf.models.factory import build_model
from raydf.models.normalization import IMAGENET, Normalization, input_normalization
from raydf.training import heap
from raydf.training.engine import Precision, default_device, fold_prob_fake, to_input


@dataclass(frozen=True)
class EnsembleSettings:
    """What turns an image into the models' input and how they compute: the run's own values."""

    model: str = DEFAULT_MODEL
    dropout: float = 0.5
    resize: int = 256  # data.resize: images are decoded to this square size first
    crop: int = 224  # data.crop: then centre-cropped to this
    precision: str = "auto"
    tta: bool = False
    norm: Normalization = IMAGENET  # the input normalisation the weights were trained with
    calibration: Calibration = NONE  # how the models' P(fake) become the soft vote (RUN_DIR/calibration.json)

    @classmethod
    def from_config(cls, cfg: Config, calibration: Calibration = NONE) -> EnsembleSettings:
        """A run's settings: its backbone, input sizes, precision, test-time augmentation and normalisation (a
        finished run's config carries the one its checkpoints record: raydf.pipelines.prediction.load_finished_run)."""
        return cls(
            cfg.model.name,
            cfg.model.dropout,
            cfg.data.resize,
            cfg.data.crop,
            cfg.train.precision,
            cfg.predict.tta,
            input_normalization(cfg.model),
            calibration,
        )


class FoldEnsemble:
    """K fold networks, loaded once; `predict` scores a batch through all of them.

    `lock` serialises use of the networks: Grad-CAM hooks their layers, and a batch predicted meanwhile from another
    thread would run through those hooks.
    """

    def __init__(
        self,
        states: Sequence[Mapping[str, np.ndarray | torch.Tensor]],
        settings: EnsembleSettings,
        device: Optional[torch.device] = None,
    ):
        self.settings = settings
        self.device = device or default_device()
        self.precision = Precision.resolve(settings.precision, self.device)
        self.models = [self._load(state) for state in states]
        self.lock = threading.Lock()
        self._batches = 0  # predicted so far: freed heap memory is handed back every heap.EVERY_BATCHES

    def _load(self, state: Mapping[str, np.ndarray | torch.Tensor]) -> torch.nn.Module:
        net = build_model(self.settings.dropout, self.settings.model)
        net.load_state_dict(
            {k: torch.as_tensor(np.array(v) if isinstance(v, np.ndarray) else v) for k, v in state.items()}
        )
        return net.to(self.device, memory_format=torch.channels_last).eval()

    def inputs(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, resize, resize, 3) -> the normalised, centre-cropped batch (B, 3, crop, crop) on the device."""
        crop = np.ascontiguousarray(center_crop(images, self.settings.crop))
        return to_input(torch.from_numpy(crop), self.device, self.settings.norm)

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """P(fake) of uint8 images (B, resize, resize, 3) under each fold: (K, B); the soft vote is its mean over K."""
        with self.lock:
            probs = fold_prob_fake(self.models, self.inputs(images), self.device, self.precision, self.settings.tta)
            heap.every(self._batches)
            self._batches += 1
        return np.stack(probs)

    def soft_vote(self, probs: np.ndarray) -> np.ndarray:
        """The run's P(fake) from the models' (K, B): their mean, or the calibrated vote of a calibrated run. Every
        way a run predicts (its test set, raydf.predict, raydf.evaluate, raydf.serve) goes through here."""
        return self.settings.calibration.prob(probs)
